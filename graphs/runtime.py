"""Building the engine and the image memory that graphs run on, from a model spec or environment variables.

``--model`` / ``SEEDX_MODEL`` is a spec for ``SeedX.load``: ``"mini"`` (the bundled trained miniature), a preset
name such as ``"tiny-random"`` (random weights) or a checkpoint folder. Only ``"mini"`` falls back (to
``"tiny-random"``, with a warning) when its weights are not bundled yet; any other spec fails loudly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from seedx_agent.memory import ImageMemory
from seedx_agent.tools import memory_image_embedder

from seedx_agent.engine import SeedXEngine
from seedx_agent.errors import CheckpointError
from seedx_agent.model import SeedX

__all__ = [
    "DEFAULT_MEMORY_DIR",
    "DEFAULT_MODEL",
    "FALLBACK_MODEL",
    "engine_and_memory_from_env",
    "load_engine",
    "open_memory",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "mini"
FALLBACK_MODEL = "tiny-random"
DEFAULT_MEMORY_DIR = Path("~/.cache/seedx-agent/memory")


def load_engine(spec: str | Path = DEFAULT_MODEL) -> SeedXEngine:
    """An engine over ``SeedX.load(spec)`` with generation and editing; ``"mini"`` falls back to tiny-random."""
    try:
        model = SeedX.load(spec, variants=("seed-x-i", "seed-x-edit"))
    except CheckpointError as error:
        if str(spec) != DEFAULT_MODEL:
            raise
        logger.warning(
            "the miniature model is not available (%s); using %r instead: RANDOM weights, so answers and pictures "
            "are meaningless until the miniature is trained and bundled",
            error,
            FALLBACK_MODEL,
        )
        model = SeedX.load(FALLBACK_MODEL, variants=("seed-x-i", "seed-x-edit"))
    return SeedXEngine(model)


def open_memory(root: str | Path, engine: SeedXEngine) -> ImageMemory:
    """Open (creating if needed) the image memory at ``root`` with the engine's ViT as image embedder."""
    return ImageMemory.open(Path(root).expanduser(), image_embedder=memory_image_embedder(engine))


def engine_and_memory_from_env() -> tuple[SeedXEngine, ImageMemory]:
    """Engine from ``SEEDX_MODEL`` (default ``mini``) and memory at ``SEEDX_MEMORY_DIR`` (default under ~/.cache)."""
    engine = load_engine(os.environ.get("SEEDX_MODEL", DEFAULT_MODEL))
    memory = open_memory(os.environ.get("SEEDX_MEMORY_DIR", str(DEFAULT_MEMORY_DIR)), engine)
    return engine, memory
