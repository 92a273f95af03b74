"""Fixtures shared by the training tests: the bundled tiny tokenizer and the tiny-random config; loading a
script of ``scripts/`` as a module."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from seedx_agent.config import SeedXConfig
from seedx_agent.pipeline.tokenizer import SeedXTokenizer


@pytest.fixture(scope="module")
def tok() -> SeedXTokenizer:
    return SeedXTokenizer.tiny()


@pytest.fixture(scope="module")
def config() -> SeedXConfig:
    return SeedXConfig.from_preset("tiny-random")


def _load_script(name: str) -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], ModuleType]:
    """``load_script(name)``: ``scripts/<name>.py`` imported as module ``name`` (registered in ``sys.modules``, as
    the scripts import each other by name)."""
    return _load_script
