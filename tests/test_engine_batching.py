"""Micro-batching of concurrent ``generate_image`` calls in ``SeedXEngine`` and ``SeedX.generate_images``.

Batched images are compared with unbatched ones per seed with a tolerance of 2/255 after uint8 conversion:
the batched UNet/perceiver matmuls round differently in the last float bits (measured: at most 1/255 in
a few pixels), while the initial noise, LLM tokens and regressed features are identical.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

from seedx_agent.engine import SeedXEngine
from seedx_agent.errors import ConfigError, InvalidPromptError, ResourceExhaustedError
from seedx_agent.model import GeneratedImage, SeedX

STEPS = 2
PROMPTS = ["a red cube", "two blue balls", "a green ring", "the sky", "a yellow star", "a purple box"]
TOLERANCE = 2  # uint8 levels


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: these tests run beside other work and spend their time in small kernels."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model() -> SeedX:
    return SeedX.from_pretrained("tiny-random", variants=("seed-x-i",))


@pytest.fixture(scope="module")
def serial(model: SeedX) -> dict[tuple[str, int, int], GeneratedImage]:
    """Unbatched reference results, keyed by (prompt, seed, steps), filled on demand."""
    return {}


def reference(model: SeedX, cache: dict, prompt: str, seed: int, steps: int = STEPS) -> GeneratedImage:
    key = (prompt, seed, steps)
    if key not in cache:
        cache[key] = model.generate_image(prompt, seed=seed, num_inference_steps=steps)
    return cache[key]


def assert_close(batched: GeneratedImage, alone: GeneratedImage) -> None:
    a, b = np.asarray(batched.image, dtype=np.int16), np.asarray(alone.image, dtype=np.int16)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= TOLERANCE
    assert batched.raw_text == alone.raw_text
    assert torch.equal(batched.features, alone.features)
    assert batched.seed == alone.seed


class DetokenizerCalls:
    """Records (batch size, num_inference_steps) of every stage-1 de-tokenizer call, then calls through."""

    def __init__(self, model: SeedX, fail_with: BaseException | None = None) -> None:
        self.detok = model.parts.detokenizers[1]
        self.original = self.detok.generate
        self.calls: list[tuple[int, Any]] = []
        self.fail_with = fail_with

    def __enter__(self) -> DetokenizerCalls:
        def counting(features: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.calls.append((features.shape[0], kwargs.get("num_inference_steps")))
            if self.fail_with is not None:
                raise self.fail_with
            return self.original(features, *args, **kwargs)

        self.detok.generate = counting  # instance attribute shadows the method
        return self

    def __exit__(self, *exc: object) -> None:
        del self.detok.generate


def run_threads(jobs: list[Callable[[], Any]]) -> tuple[list[Any], list[BaseException | None]]:
    """Start every job at once (barrier); returns per-job results and errors."""
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException | None] = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def worker(index: int) -> None:
        barrier.wait(timeout=30)
        try:
            results[index] = jobs[index]()
        except BaseException as error:  # handed back to the test
            errors[index] = error

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not any(thread.is_alive() for thread in threads), "deadlock"
    return results, errors


def test_generate_images_matches_generate_image_per_seed(model, serial):
    prompts, seeds = PROMPTS[:4], [0, 1, 2, 3]
    batched = model.generate_images(prompts, seeds=seeds, num_inference_steps=STEPS)
    assert len(batched) == 4 and all(r.timings["batch_size"] == 4 for r in batched)
    for prompt, seed, result in zip(prompts, seeds, batched, strict=True):
        assert_close(result, reference(model, serial, prompt, seed))
    single = model.generate_images(prompts[:1], seeds=seeds[:1], num_inference_steps=STEPS)[0]
    assert np.array_equal(np.asarray(single.image), np.asarray(reference(model, serial, prompts[0], 0).image))


def test_generate_images_rejects_bad_arguments(model):
    with pytest.raises(InvalidPromptError, match="2 seeds for 1 prompts"):
        model.generate_images(["a"], seeds=[1, 2])
    with pytest.raises(InvalidPromptError, match="non-empty list"):
        model.generate_images("a red cube")


def test_six_threads_share_de_tokenizer_calls(model, serial):
    engine = SeedXEngine(model, batch_window_s=0.2)
    jobs = [lambda i=i: engine.generate_image(PROMPTS[i], seed=10 + i, num_inference_steps=STEPS) for i in range(6)]
    with DetokenizerCalls(model) as detok:
        results, errors = run_threads(jobs)
    assert errors == [None] * 6
    assert len(detok.calls) < 6 and sum(size for size, _ in detok.calls) == 6
    assert engine.batches_run == len(detok.calls) and engine.batched_requests == 6
    assert engine.calls == 6  # requests served, as without batching
    for i, result in enumerate(results):
        assert_close(result, reference(model, serial, PROMPTS[i], 10 + i))


def test_incompatible_options_are_not_merged(model, serial):
    engine = SeedXEngine(model, batch_window_s=0.2)
    steps = [2, 1, 2, 1]
    jobs = [lambda i=i: engine.generate_image(PROMPTS[i], seed=i, num_inference_steps=steps[i]) for i in range(4)]
    with DetokenizerCalls(model) as detok:
        results, errors = run_threads(jobs)
    assert errors == [None] * 4
    # Every de-tokenizer call ran one steps value, and each value's two requests were all served.
    for value in (1, 2):
        assert sum(size for size, s in detok.calls if s == value) == 2
    assert engine.batches_run == len(detok.calls) >= 2
    for i, result in enumerate(results):
        assert_close(result, reference(model, serial, PROMPTS[i], i, steps[i]))


def test_an_error_in_a_batch_reaches_every_caller(model):
    engine = SeedXEngine(model, batch_window_s=0.2)
    jobs = [lambda i=i: engine.generate_image(PROMPTS[i], seed=i, num_inference_steps=0) for i in range(3)]
    results, errors = run_threads(jobs)
    assert results == [None] * 3
    assert all(isinstance(error, ConfigError) and "num_inference_steps" in str(error) for error in errors)
    # One exception object per batch, handed to each of its callers.
    assert len({id(error) for error in errors}) == engine.batches_run < 3
    # The engine is usable afterwards (locks released, no stale open batch).
    assert engine.generate_image(PROMPTS[0], seed=0, num_inference_steps=1).image.size == (32, 32)


def test_out_of_memory_in_a_batch_maps_to_resource_exhausted(model):
    engine = SeedXEngine(model, batch_window_s=0.2)
    jobs = [lambda i=i: engine.generate_image(PROMPTS[i], seed=i, num_inference_steps=1) for i in range(2)]
    with DetokenizerCalls(model, fail_with=torch.OutOfMemoryError("simulated")):
        _, errors = run_threads(jobs)
    assert all(isinstance(error, ResourceExhaustedError) and "generate_images" in str(error) for error in errors)


def test_disabled_batching_runs_each_call_alone_bit_exactly(model, serial):
    engine = SeedXEngine(model)  # batch_window_s=0 by default
    assert engine.batch_window_s == 0
    jobs = [lambda i=i: engine.generate_image(PROMPTS[i], seed=i, num_inference_steps=STEPS) for i in range(3)]
    with DetokenizerCalls(model) as detok:
        results, errors = run_threads(jobs)
    assert errors == [None] * 3
    assert [size for size, _ in detok.calls] == [1, 1, 1] and engine.batches_run == 0 and engine.calls == 3
    for i, result in enumerate(results):
        alone = reference(model, serial, PROMPTS[i], i)
        assert np.array_equal(np.asarray(result.image), np.asarray(alone.image))


def test_unbatchable_arguments_take_the_plain_path(model):
    engine = SeedXEngine(model, batch_window_s=0.05)
    with pytest.raises(TypeError):
        engine.generate_image(PROMPTS[0], seed=0, no_such_option=1)
    assert engine.batches_run == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_window_s": -1}, "batch_window_s"),
        ({"batch_window_s": float("nan")}, "batch_window_s"),
        ({"max_batch": 0}, "max_batch"),
    ],
)
def test_engine_rejects_bad_batching_settings(model, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SeedXEngine(model, **kwargs)
