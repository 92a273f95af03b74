"""seedx-agent: SEED-X re-implemented as a library.

``from seedx_agent import SeedX, SeedXConfig, SeedXEngine, Box, GenerationOptions`` (and the ``SeedXError``
family) works. The errors are plain Python and imported at once; every other name is imported on first use, so
``import seedx_agent`` stays fast, imports no torch and prints nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from seedx_agent import errors as _errors
from seedx_agent.errors import *  # noqa: F403  (the error family; its list lives in errors.__all__)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports them on first use
    from seedx_agent.config import SeedXConfig as SeedXConfig
    from seedx_agent.engine import SeedXEngine as SeedXEngine
    from seedx_agent.model import ChatMessage as ChatMessage
    from seedx_agent.model import SeedX as SeedX
    from seedx_agent.pipeline.decoding import ComparisonSwitches as ComparisonSwitches
    from seedx_agent.pipeline.decoding import GenerationOptions as GenerationOptions
    from seedx_agent.pipeline.tokens import Box as Box

# public name -> the module that defines it (imported lazily by __getattr__)
_EXPORTS: dict[str, str] = {
    "Box": "seedx_agent.pipeline.tokens",
    "ChatMessage": "seedx_agent.model",
    "ComparisonSwitches": "seedx_agent.pipeline.decoding",
    "GenerationOptions": "seedx_agent.pipeline.decoding",
    "SeedX": "seedx_agent.model",
    "SeedXConfig": "seedx_agent.config",
    "SeedXEngine": "seedx_agent.engine",
}

__all__ = sorted([*_EXPORTS, *_errors.__all__])


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
