"""``SeedXEngine`` mirrors ``SeedX``: the same signatures, result types and docs, so tools and graphs keep the
typed API; calls still run under the device locks."""

from __future__ import annotations

import inspect

import PIL.Image
import pytest

from seedx_agent.engine import SeedXEngine
from seedx_agent.errors import InvalidPromptError
from seedx_agent.model import ComprehendResult, GeneratedImage, SeedX

ABILITIES = ("comprehend", "ground", "generate_image", "edit_image", "chat", "reconstruct", "image_embeddings")


@pytest.fixture(scope="module")
def engine() -> SeedXEngine:
    return SeedXEngine(SeedX.from_pretrained("tiny-random", variants=("seed-x-i", "seed-x-edit")))


@pytest.mark.parametrize("name", ABILITIES)
def test_every_ability_has_the_facades_signature_and_docs(engine: SeedXEngine, name: str) -> None:
    mirrored, original = getattr(engine, name), getattr(engine.model, name)
    assert inspect.signature(mirrored) == inspect.signature(original)
    assert mirrored.__doc__ == original.__doc__ and mirrored.__name__ == name


def test_calls_go_through_the_locks_and_return_the_facades_types(engine: SeedXEngine) -> None:
    calls = engine.calls
    picture = PIL.Image.new("RGB", (40, 30), "white")
    assert isinstance(engine.comprehend(picture, "what is it?"), ComprehendResult)
    assert isinstance(engine.generate_image("a cat", seed=0, num_inference_steps=1), GeneratedImage)
    assert engine.calls == calls + 2
    with pytest.raises(InvalidPromptError):
        engine.comprehend(picture, "")  # the facade's own validation, unchanged
