"""Fixtures shared by the training tests: the bundled tiny tokenizer and the tiny-random config."""

from __future__ import annotations

import pytest

from seedx_agent.config import SeedXConfig
from seedx_agent.pipeline.tokenizer import SeedXTokenizer


@pytest.fixture(scope="module")
def tok() -> SeedXTokenizer:
    return SeedXTokenizer.tiny()


@pytest.fixture(scope="module")
def config() -> SeedXConfig:
    return SeedXConfig.from_preset("tiny-random")
