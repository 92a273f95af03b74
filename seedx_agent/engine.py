"""Thread-safe access to one loaded ``SeedX`` for many callers (tools, graph nodes, web handlers).

LangGraph runs tool calls in parallel threads; a model's KV caches and CUDA streams are not meant to
be shared mid-call. The engine keeps one lock per device and takes the locks of every device a call
touches, always in the same order, so callers on different devices never deadlock and calls on the
same device run one at a time.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

from seedx_agent.errors import ResourceExhaustedError
from seedx_agent.model import SeedX

__all__ = ["SeedXEngine"]

T = TypeVar("T")


def _module_device(module: torch.nn.Module) -> str:
    param = next(module.parameters(), None)
    return str(param.device) if param is not None else "cpu"


class SeedXEngine:
    """Serialises work per device; every public ability of ``SeedX`` is available here."""

    def __init__(self, model: SeedX) -> None:
        self.model = model
        parts = model.parts
        self._devices = {"vision": _module_device(parts.vision)}
        self._devices["llm"] = ",".join(sorted({_module_device(m) for m in parts.lvlms.values()}))
        self._devices["detokenizer"] = ",".join(sorted({_module_device(m) for m in parts.detokenizers.values()}))
        names = sorted({d for value in self._devices.values() for d in value.split(",") if d})
        self._locks = {name: threading.Lock() for name in names}
        self.calls = 0
        self.wait_seconds = 0.0
        self._stats_lock = threading.Lock()

    @contextlib.contextmanager
    def _hold(self, components: tuple[str, ...]) -> Iterator[None]:
        names = sorted({d for c in components for d in self._devices[c].split(",") if d})
        start = time.perf_counter()
        acquired = []
        try:
            for name in names:  # fixed global order: no lock-order deadlocks
                self._locks[name].acquire()
                acquired.append(name)
            with self._stats_lock:
                self.calls += 1
                self.wait_seconds += time.perf_counter() - start
            yield
        finally:
            for name in reversed(acquired):
                self._locks[name].release()

    def _call(self, components: tuple[str, ...], fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._hold(components):
            try:
                return fn(*args, **kwargs)
            except torch.OutOfMemoryError as exc:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise ResourceExhaustedError(
                    f"out of device memory in {fn.__name__} ({', '.join(components)}): use bf16/fp16, "
                    "quantize_llm=4 or 8, put the de-tokenizer on another device with device_map, or "
                    "lower the image size"
                ) from exc

    def comprehend(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(("vision", "llm"), self.model.comprehend, *args, **kwargs)

    def ground(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(("vision", "llm"), self.model.ground, *args, **kwargs)

    def generate_image(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(("vision", "llm", "detokenizer"), self.model.generate_image, *args, **kwargs)

    def edit_image(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(("vision", "llm", "detokenizer"), self.model.edit_image, *args, **kwargs)

    def chat(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(("vision", "llm", "detokenizer"), self.model.chat, *args, **kwargs)

    def reconstruct(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(("vision", "detokenizer"), self.model.reconstruct, *args, **kwargs)

    def image_embeddings(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(("vision",), self.model.image_embeddings, *args, **kwargs)
