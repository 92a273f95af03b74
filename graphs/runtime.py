"""Building the engine and the image memory that graphs run on, from a model spec or environment variables.

``--planner`` / ``SEEDX_PLANNER`` picks who plans the story, slides and refine workflows (``load_planner``):
``seedx`` (``ChatSeedX`` on the same engine), ``world`` (the miniature's deterministic plug-in, found by name
like any other plug-in) or ``module:attr`` (an importable chat model, planner object or zero-argument factory).

``--model`` / ``SEEDX_MODEL`` is a spec for ``SeedX.from_pretrained``: ``"mini"`` (the bundled trained
miniature), a preset name such as ``"tiny-random"`` (random weights) or a checkpoint folder. Only ``"mini"`` falls
back (to ``"tiny-random"``, with a warning) when its weights are not bundled yet; any other spec fails loudly.

Servers (the LangGraph server's zero-argument graph factories, the OpenAI-compatible API) share one engine per
model spec and one memory per folder for the whole process: ``shared_engine`` / ``shared_engine_and_memory``
load them once under a module-level lock, and every later call (any thread) gets the same objects. A memory
folder can be open only once per process, so a second ``open_memory`` of the same folder would fail with
``MemoryLockedError``; the shared one never does.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

from seedx_agent.memory import ChromaServer, ImageMemory, parse_chroma_address
from seedx_agent.tools import memory_image_embedder

from seedx_agent.config import PRESETS
from seedx_agent.engine import SeedXEngine
from seedx_agent.errors import CheckpointError, ConfigError
from seedx_agent.model import SeedX

__all__ = [
    "CHROMA_ENV",
    "DEFAULT_MEMORY_DIR",
    "DEFAULT_MODEL",
    "FALLBACK_MODEL",
    "PLANNER_ALIASES",
    "chroma_from_env",
    "default_planner",
    "engine_and_memory_from_env",
    "load_engine",
    "load_planner",
    "open_memory",
    "planner_from_env",
    "resolve_chroma",
    "shared_engine",
    "shared_engine_and_memory",
    "shared_engine_and_memory_from_env",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "mini"
FALLBACK_MODEL = "tiny-random"
DEFAULT_MEMORY_DIR = Path("~/.cache/seedx-agent/memory")
CHROMA_ENV = "SEEDX_CHROMA"
"""``HOST:PORT[/PREFIX]`` of a chroma server: every memory opened here is then in shared mode on that server, so
several processes (server workers, Ray replicas, a CLI beside a server) use one memory folder at once."""


def engine_device(device: str | None = None) -> str:
    """The device engines load on: ``device``, else ``SEEDX_DEVICE`` (e.g. ``cuda``, ``cuda:1``), else ``cpu``;
    a ``ConfigError`` names a bad or absent device before any weights are read."""
    import torch

    name = device or os.environ.get("SEEDX_DEVICE") or "cpu"
    try:
        chosen = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise ConfigError(
            f"device {name!r} is not a torch device (SEEDX_DEVICE); use e.g. cpu, cuda or cuda:0"
        ) from error
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asks for CUDA, which this machine or torch build lacks; use cpu")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return name


def load_engine(spec: str | Path = DEFAULT_MODEL, *, device: str | None = None) -> SeedXEngine:
    """An engine over ``SeedX.from_pretrained(spec)`` with generation and editing on ``engine_device(device)``
    (default: ``SEEDX_DEVICE`` or cpu); ``"mini"`` falls back to tiny-random."""
    device = engine_device(device)
    try:
        model = SeedX.from_pretrained(spec, variants=("seed-x-i", "seed-x-edit"), device=device)
    except CheckpointError as error:
        if str(spec) != DEFAULT_MODEL:
            if not Path(spec).exists():  # say which names are trained weights and which are random
                random_presets = ", ".join(sorted(name for name in PRESETS if name != "mini"))
                raise CheckpointError(
                    f"model {str(spec)!r} does not exist: pass an existing checkpoint folder, 'mini' (the bundled "
                    f"trained miniature) or a preset with random weights ({random_presets})"
                ) from error
            raise
        logger.warning(
            "the miniature model is not available (%s); using %r instead: RANDOM weights, so answers and pictures "
            "are meaningless until the miniature is trained and bundled",
            error,
            FALLBACK_MODEL,
        )
        model = SeedX.from_pretrained(FALLBACK_MODEL, variants=("seed-x-i", "seed-x-edit"), device=device)
    return SeedXEngine(model)


def chroma_from_env() -> ChromaServer | None:
    """The chroma server named by ``SEEDX_CHROMA`` (``HOST:PORT[/PREFIX]``), or None when it is unset."""
    text = os.environ.get(CHROMA_ENV, "").strip()
    return parse_chroma_address(text) if text else None


def resolve_chroma(chroma: ChromaServer | str | None) -> ChromaServer | None:
    """The chroma server a memory opens on: ``chroma`` (settings or ``"HOST:PORT[/PREFIX]"``), else
    ``SEEDX_CHROMA``; None means a single-process memory."""
    if isinstance(chroma, str):
        return parse_chroma_address(chroma)
    return chroma or chroma_from_env()


def open_memory(root: str | Path, engine: SeedXEngine, *, chroma: ChromaServer | str | None = None) -> ImageMemory:
    """Open (creating if needed) the image memory at ``root`` with the engine's ViT as image embedder.

    With ``chroma`` (a ``ChromaServer`` or ``"HOST:PORT[/PREFIX]"``; default ``SEEDX_CHROMA``) the memory opens in
    shared mode on that server, so other processes can open the same ``root`` at the same time."""
    server = resolve_chroma(chroma)
    embedder = memory_image_embedder(engine)
    if server is None:
        return ImageMemory.open(Path(root).expanduser(), image_embedder=embedder)
    return ImageMemory.open(Path(root).expanduser(), image_embedder=embedder, client=server, shared=True)


def engine_and_memory_from_env() -> tuple[SeedXEngine, ImageMemory]:
    """Engine from ``SEEDX_MODEL`` (default ``mini``) and memory at ``SEEDX_MEMORY_DIR`` (default under ~/.cache)."""
    engine = load_engine(os.environ.get("SEEDX_MODEL", DEFAULT_MODEL))
    memory = open_memory(os.environ.get("SEEDX_MEMORY_DIR", str(DEFAULT_MEMORY_DIR)), engine)
    return engine, memory


# ---------------------------------------------------------------------------------------------- process-wide sharing

# One lock for every load: loading is rare, and two threads asking for the same model must not load it twice.
_SHARED_LOCK = threading.Lock()
_SHARED_ENGINES: dict[str, SeedXEngine] = {}
_SHARED_MEMORIES: dict[Path, tuple[ImageMemory, SeedXEngine]] = {}


def _memory_root(root: str | Path) -> Path:
    return Path(root).expanduser().resolve()


def shared_engine(spec: str | Path = DEFAULT_MODEL) -> SeedXEngine:
    """The process's engine for ``spec``: loaded on the first call (``load_engine``), the same object afterwards.

    Thread-safe; blocking while the model loads, so an asyncio caller runs it in a worker thread."""
    key = str(spec)
    with _SHARED_LOCK:
        engine = _SHARED_ENGINES.get(key)
        if engine is None:
            logger.info("loading the shared engine for model %r", key)
            engine = _SHARED_ENGINES[key] = load_engine(spec)
        return engine


def shared_engine_and_memory(
    spec: str | Path, memory_root: str | Path, *, chroma: ChromaServer | str | None = None
) -> tuple[SeedXEngine, ImageMemory]:
    """The process's engine for ``spec`` and its memory at ``memory_root``, each opened once (thread-safe);
    ``chroma`` as in ``open_memory``.

    A folder already shared with another model's engine is a ``ConfigError`` (its image embeddings would mix)."""
    engine = shared_engine(spec)
    root = _memory_root(memory_root)
    with _SHARED_LOCK:
        found = _SHARED_MEMORIES.get(root)
        if found is not None and found[0].closed:  # closed by its user: open it again
            found = None
        if found is None:
            memory = open_memory(root, engine, chroma=chroma)
            _SHARED_MEMORIES[root] = (memory, engine)
            return engine, memory
        memory, owner = found
    if owner is not engine:
        raise ConfigError(
            f"the image memory at {root} is already shared in this process with another model; give model "
            f"{str(spec)!r} its own memory folder (SEEDX_MEMORY_DIR)"
        )
    return engine, memory


def shared_engine_and_memory_from_env() -> tuple[SeedXEngine, ImageMemory]:
    """``shared_engine_and_memory`` of ``SEEDX_MODEL`` (default ``mini``) and ``SEEDX_MEMORY_DIR`` (default under
    ~/.cache): what the LangGraph server's graph factories run on, loaded once per process."""
    return shared_engine_and_memory(
        os.environ.get("SEEDX_MODEL", DEFAULT_MODEL), os.environ.get("SEEDX_MEMORY_DIR", str(DEFAULT_MEMORY_DIR))
    )


# Named plug-ins: a name is resolved like ``module:attr`` (imported only when asked for).
PLANNER_ALIASES = {"world": "seedx_agent.miniature.planners:WorldPlanner"}
# Models whose own LLM cannot plan in free text (the miniature and random weights): the world plug-in plans.
_WORLD_MODELS = frozenset({"mini", "tiny-random"})


def default_planner(model_spec: str | Path) -> str:
    """``world`` for the miniature and random presets (their LLM cannot write free-form plans), else ``seedx``."""
    return "world" if str(model_spec) in _WORLD_MODELS else "seedx"


def load_planner(spec: str, engine: SeedXEngine, memory: ImageMemory, *, namespace: str = "planner") -> Any:
    """The planner named by ``spec``: ``seedx``, a plug-in name (``world``) or ``module:attr``.

    ``module:attr`` may be a chat model or planner instance, a class, or a zero-argument factory returning one.
    """
    if spec == "seedx":
        from seedx_agent.tools import ChatSeedX

        return ChatSeedX(engine=engine, memory=memory, namespace=namespace, image_output="off")
    target = PLANNER_ALIASES.get(spec, spec)
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError(
            f"unknown planner {spec!r}: use 'seedx', one of {sorted(PLANNER_ALIASES)} or 'module:attr' naming an "
            "importable chat model (or a factory returning one)"
        )
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"planner {spec!r}: cannot import {target!r} ({error})") from error
    if isinstance(found, type) or (callable(found) and not hasattr(found, "invoke") and not hasattr(found, "plan")):
        found = found()  # a class or a factory
    return found


def planner_from_env(engine: SeedXEngine, memory: ImageMemory) -> Any:
    """The planner from ``SEEDX_PLANNER`` (default: ``default_planner`` of ``SEEDX_MODEL``)."""
    spec = os.environ.get("SEEDX_PLANNER") or default_planner(os.environ.get("SEEDX_MODEL", DEFAULT_MODEL))
    return load_planner(spec, engine, memory)
