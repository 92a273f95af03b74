"""seedx-agent: SEED-X re-implemented as a library.

``from seedx_agent import SeedX, SeedXConfig, SeedXEngine, Box, GenerationOptions`` (and the ``SeedXError``
family) works; each name is imported on first use, so ``import seedx_agent`` stays fast, imports no torch and
prints nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from seedx_agent.config import SeedXConfig
    from seedx_agent.engine import SeedXEngine
    from seedx_agent.errors import (
        CapabilityMissingError,
        CheckpointError,
        ConfigError,
        CorruptCheckpointError,
        DependencyMissingError,
        ImageTokenMismatchError,
        ImageTooLargeError,
        InvalidBoxError,
        InvalidImageError,
        InvalidPromptError,
        NonFiniteWeightError,
        ResourceExhaustedError,
        SeedXError,
        StateDictMismatchError,
        UnknownPresetError,
        UnsafeCheckpointError,
    )
    from seedx_agent.model import ChatMessage, SeedX
    from seedx_agent.pipeline.decoding import ComparisonSwitches, GenerationOptions
    from seedx_agent.pipeline.tokens import Box

_ERRORS = (
    "CapabilityMissingError",
    "CheckpointError",
    "ConfigError",
    "CorruptCheckpointError",
    "DependencyMissingError",
    "ImageTokenMismatchError",
    "ImageTooLargeError",
    "InvalidBoxError",
    "InvalidImageError",
    "InvalidPromptError",
    "NonFiniteWeightError",
    "ResourceExhaustedError",
    "SeedXError",
    "StateDictMismatchError",
    "UnknownPresetError",
    "UnsafeCheckpointError",
)
# public name -> the module that defines it (imported lazily by __getattr__)
_EXPORTS: dict[str, str] = {
    "Box": "seedx_agent.pipeline.tokens",
    "ChatMessage": "seedx_agent.model",
    "ComparisonSwitches": "seedx_agent.pipeline.decoding",
    "GenerationOptions": "seedx_agent.pipeline.decoding",
    "SeedX": "seedx_agent.model",
    "SeedXConfig": "seedx_agent.config",
    "SeedXEngine": "seedx_agent.engine",
    **dict.fromkeys(_ERRORS, "seedx_agent.errors"),
}

__all__ = [
    "Box",
    "CapabilityMissingError",
    "ChatMessage",
    "CheckpointError",
    "ComparisonSwitches",
    "ConfigError",
    "CorruptCheckpointError",
    "DependencyMissingError",
    "GenerationOptions",
    "ImageTokenMismatchError",
    "ImageTooLargeError",
    "InvalidBoxError",
    "InvalidImageError",
    "InvalidPromptError",
    "NonFiniteWeightError",
    "ResourceExhaustedError",
    "SeedX",
    "SeedXConfig",
    "SeedXEngine",
    "SeedXError",
    "StateDictMismatchError",
    "UnknownPresetError",
    "UnsafeCheckpointError",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access (PEP 562) and cache the name here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'seedx_agent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names plus the lazily imported public ones."""
    return sorted(set(globals()) | set(_EXPORTS))
