"""Shared fixtures of the reliability tests: one tiny-random engine and the tools over it (the memory comes from
tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
from langchain_core.tools import BaseTool
from PIL import Image
from reliability_helpers import NAMESPACE
from seedx_agent.memory import ImageMemory
from seedx_agent.tools import make_seedx_tools

from seedx_agent.engine import SeedXEngine
from seedx_agent.model import SeedX


@pytest.fixture(scope="session")
def tiny_model() -> SeedX:
    """The tiny-random stack with the instruct and edit LLMs and both de-tokenizer stages."""
    return SeedX.from_pretrained("tiny-random", variants=("seed-x-i", "seed-x-edit"))


@pytest.fixture(scope="session")
def engine(tiny_model: SeedX) -> SeedXEngine:
    return SeedXEngine(tiny_model)


@pytest.fixture(scope="module")
def tools(engine: SeedXEngine, memory: ImageMemory) -> dict[str, BaseTool]:
    return {tool.name: tool for tool in make_seedx_tools(engine, memory, namespace=NAMESPACE, default_steps=1)}


@pytest.fixture(scope="module")
def stored_id(memory: ImageMemory) -> str:
    """A stored input image (red square on black) in the tools' namespace."""
    pixels = np.zeros((40, 48, 3), dtype=np.uint8)  # (height, width, rgb)
    pixels[8:30, 10:36] = (200, 30, 30)
    return memory.add(Image.fromarray(pixels), kind="input", namespace=NAMESPACE, caption="a red square").id
