"""Thread-safe access to one loaded ``SeedX`` for many callers (tools, graph nodes, web handlers).

LangGraph runs tool calls in parallel threads; a model's KV caches and CUDA streams are not meant to
be shared mid-call. The engine keeps one lock per device and takes the locks of every device a call
touches, always in the same order, so callers on different devices never deadlock and calls on the
same device run one at a time.

With ``batch_window_s > 0``, concurrent ``generate_image`` calls with the same rendering options are
micro-batched: the first caller waits ``batch_window_s`` (and for the device locks), every compatible
call arriving meanwhile joins it (up to ``max_batch``), and one ``SeedX.generate_images`` serves them
all, so the de-tokenizer runs once per batch. Off by default: batched UNet matmuls round differently
in the last float bits, so a batched image may differ from the serial one by 1/255 in a few pixels.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

import torch

from seedx_agent.errors import ConfigError, ResourceExhaustedError
from seedx_agent.model import GeneratedImage, SeedX

__all__ = ["SeedXEngine"]

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


def _same_signature(
    method: Callable[Concatenate[SeedX, P], R],
) -> Callable[[Callable[..., R]], Callable[Concatenate[SeedXEngine, P], R]]:
    """Give an engine method ``SeedX.<method>``'s signature, result type and docs (for users and type checkers)."""

    def decorate(function: Callable[..., R]) -> Callable[Concatenate[SeedXEngine, P], R]:
        return functools.wraps(method)(function)

    return decorate


def _serialised(
    components: tuple[str, ...], method: Callable[Concatenate[SeedX, P], R]
) -> Callable[Concatenate[SeedXEngine, P], R]:
    """An engine method with exactly ``SeedX.<method>``'s signature, result type and docs, run under the locks
    of the devices ``components`` live on (so tools and graphs keep the typed API)."""

    @_same_signature(method)
    def call(self: SeedXEngine, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._call(components, getattr(self.model, method.__name__), *args, **kwargs)

    return call


_GENERATION = ("vision", "llm", "detokenizer")
# generate_image options a batch must share; ``seed`` and ``prompt`` may differ per request.
_SHARED_OPTIONS = frozenset(
    {"num_inference_steps", "guidance_scale", "size", "scheduler", "variant", "options", "progress"}
)


@dataclass
class _Request:
    prompt: str
    seed: int | None
    future: Future = field(default_factory=Future)


@dataclass
class _Batch:
    options: dict[str, Any]
    requests: list[_Request] = field(default_factory=list)


def _batch_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    """Hashable identity of the shared options, or None when the call cannot be batched (odd arguments)."""
    if args:
        prompt = args[0] if len(args) == 1 and "prompt" not in kwargs else None
    else:
        prompt = kwargs.get("prompt")
    if not isinstance(prompt, str) or not set(kwargs) <= _SHARED_OPTIONS | {"prompt", "seed"}:
        return None
    seed = kwargs.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        return None  # let the plain path report it for this caller alone
    key = []
    for name in sorted(_SHARED_OPTIONS & set(kwargs)):
        value = kwargs[name]
        if hasattr(value, "model_dump_json"):  # GenerationOptions (pydantic): compare by content
            value = (type(value).__name__, value.model_dump_json())
        try:
            hash(value)
        except TypeError:
            return None
        key.append((name, value))
    return tuple(key)


def _module_device(module: torch.nn.Module) -> str:
    param = next(module.parameters(), None)
    return str(param.device) if param is not None else "cpu"


class SeedXEngine:
    """Serialises work per device; every public ability of ``SeedX`` is available here.

    ``batch_window_s`` (seconds, 0 = off) and ``max_batch`` control micro-batching of concurrent
    ``generate_image`` calls; ``batches_run`` and ``batched_requests`` count what it did.
    """

    def __init__(self, model: SeedX, *, batch_window_s: float = 0.0, max_batch: int = 8) -> None:
        if isinstance(batch_window_s, bool) or not isinstance(batch_window_s, (int, float)):
            raise ConfigError(f"batch_window_s must be a number of seconds >= 0, got {batch_window_s!r}")
        if not math.isfinite(batch_window_s) or batch_window_s < 0:
            raise ConfigError(f"batch_window_s must be a finite number of seconds >= 0, got {batch_window_s!r}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        self.model = model
        self.batch_window_s = float(batch_window_s)
        self.max_batch = max_batch
        self.batches_run = 0  # generate_images calls made by micro-batching
        self.batched_requests = 0  # generate_image requests those calls served
        self._open_batches: dict[tuple[Any, ...], _Batch] = {}
        self._batch_lock = threading.Lock()
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
            return self._run(components, fn, *args, **kwargs)

    @staticmethod
    def _run(components: tuple[str, ...], fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn``, mapping device OOM to ``ResourceExhaustedError``; the caller holds the locks."""
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

    comprehend = _serialised(("vision", "llm"), SeedX.comprehend)
    ground = _serialised(("vision", "llm"), SeedX.ground)

    def _generate_image(self, *args: Any, **kwargs: Any) -> GeneratedImage:
        """``SeedX.generate_image`` under the locks, micro-batched with compatible concurrent calls when enabled."""
        key = _batch_key(args, kwargs) if self.batch_window_s > 0 and self.max_batch > 1 else None
        if key is None:
            return self._call(_GENERATION, self.model.generate_image, *args, **kwargs)
        options = {k: v for k, v in kwargs.items() if k in _SHARED_OPTIONS}
        request = _Request(args[0] if args else kwargs["prompt"], kwargs.get("seed"))
        with self._batch_lock:
            batch = self._open_batches.get(key)
            leader = batch is None
            if batch is None:
                batch = self._open_batches[key] = _Batch(options)
            batch.requests.append(request)
            if len(batch.requests) >= self.max_batch:  # full: the next compatible call starts a new batch
                del self._open_batches[key]
        if leader:
            self._serve_batch(key, batch)
        return request.future.result()  # raises the batch's exception in every caller

    def _serve_batch(self, key: tuple[Any, ...], batch: _Batch) -> None:
        """Wait the window and for the devices (compatible calls join meanwhile), then run the batch once."""
        requests: list[_Request] = []
        try:
            time.sleep(self.batch_window_s)
            with self._hold(_GENERATION):
                with self._batch_lock:  # close the batch: later calls start another one
                    if self._open_batches.get(key) is batch:
                        del self._open_batches[key]
                    requests = list(batch.requests)
                with self._stats_lock:
                    self.calls += len(requests) - 1  # ``calls`` counts requests served, as unbatched
                    self.batches_run += 1
                    self.batched_requests += len(requests)
                results: list[GeneratedImage] = self._run(
                    _GENERATION,
                    self.model.generate_images,
                    [r.prompt for r in requests],
                    seeds=[r.seed for r in requests],
                    **batch.options,
                )
        except BaseException as exc:
            with self._batch_lock:  # failed before closing: nobody may join a dead batch
                if self._open_batches.get(key) is batch:
                    del self._open_batches[key]
                requests = list(batch.requests)
            for request in requests:
                request.future.set_exception(exc)
            return
        for request, result in zip(requests, results, strict=True):
            request.future.set_result(result)

    @_same_signature(SeedX.generate_image)
    def generate_image(self, *args: Any, **kwargs: Any) -> GeneratedImage:
        return self._generate_image(*args, **kwargs)

    edit_image = _serialised(("vision", "llm", "detokenizer"), SeedX.edit_image)
    chat = _serialised(("vision", "llm", "detokenizer"), SeedX.chat)
    reconstruct = _serialised(("vision", "detokenizer"), SeedX.reconstruct)
    image_embeddings = _serialised(("vision",), SeedX.image_embeddings)
