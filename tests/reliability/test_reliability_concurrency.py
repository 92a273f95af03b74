"""Eight threads share one ``SeedXEngine``: no deadlock, and every answer equals the serial one.

A second process opening a held memory root is covered by ``tests/memory/test_memory_locking.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from seedx_agent.engine import SeedXEngine
from seedx_agent.pipeline.decoding import GenerationOptions

DEADLINE_S = 240.0
SHORT = GenerationOptions(max_new_tokens=8)


def _image(colour: tuple[int, int, int]) -> Image.Image:
    pixels = np.zeros((30, 40, 3), dtype=np.uint8)  # (height, width, rgb)
    pixels[5:20, 8:30] = colour
    return Image.fromarray(pixels)


def _requests(engine: SeedXEngine) -> list[Callable[[], object]]:
    """Eight mixed requests with fixed seeds; each returns a comparable fingerprint of its output."""
    red, blue = _image((220, 20, 20)), _image((20, 20, 220))
    return [
        lambda: engine.comprehend(red, "What colour is the square?", options=SHORT).token_ids,
        lambda: engine.comprehend([red, blue], "What differs?", options=SHORT).token_ids,
        lambda: engine.ground(blue, "the blue square", options=SHORT).raw_text,
        lambda: engine.ground(red, "the red square", options=SHORT).raw_text,
        lambda: engine.generate_image("a red ball", seed=1, num_inference_steps=1, options=SHORT).image.tobytes(),
        lambda: engine.generate_image("a blue kite", seed=2, num_inference_steps=1, options=SHORT).image.tobytes(),
        lambda: engine.edit_image(red, "make it green", seed=3, num_inference_steps=1, options=SHORT).image.tobytes(),
        lambda: engine.image_embeddings([red, blue]).tobytes(),
    ]


def test_eight_threads_mixed_requests_match_serial(engine: SeedXEngine) -> None:
    requests = _requests(engine)
    serial = [request() for request in requests]
    results: list[object] = [None] * len(requests)
    errors: list[BaseException] = []
    start = threading.Barrier(len(requests))

    def worker(index: int) -> None:
        try:
            start.wait(timeout=30)
            results[index] = requests[index]()
        except BaseException as error:
            errors.append(error)

    calls_before = engine.calls
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DEADLINE_S)
    stuck = [i for i, thread in enumerate(threads) if thread.is_alive()]
    assert not stuck, f"requests {stuck} did not finish within {DEADLINE_S} s (deadlock?)"
    assert not errors, errors
    assert engine.calls - calls_before == len(requests)
    for index, (alone, together) in enumerate(zip(serial, results, strict=True)):
        assert alone == together, f"request {index} differs when run concurrently"


def test_a_failing_call_releases_the_engine(engine: SeedXEngine) -> None:
    """A request that raises inside the engine must not keep its device lock (the next call would hang)."""
    from seedx_agent.errors import InvalidPromptError

    with pytest.raises(InvalidPromptError):
        engine.comprehend(_image((1, 2, 3)), "")
    finished = threading.Event()
    thread = threading.Thread(
        target=lambda: (engine.comprehend(_image((1, 2, 3)), "ok?", options=SHORT), finished.set()), daemon=True
    )
    thread.start()
    thread.join(timeout=60)
    assert finished.is_set(), "the engine stayed locked after a failed call"
