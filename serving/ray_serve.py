"""The OpenAI-compatible API scaled out on Ray Serve: the same routes over separate model deployments.

``seedx-agent serve --ray`` (or ``serve run serving/ray_config.yaml``) runs three deployments:

- ``SeedXLLM`` (the ViT and the LLMs): chat completions, streamed or not (``ChatSeedX`` on its own engine,
  through ``openai_api.SeedXService``), and the LLM half of image generation and editing. Its de-tokenizers
  are stand-ins (``_DetokenizerStandIn``): ``SeedXService.generate`` / ``edit`` run unchanged, and where
  ``SeedX`` would render, the stand-in records what it would have been asked (regressed features, the CFG
  negative, the condition image, seeds, options) as a ``RenderJob``. No de-tokenizer weights live here.
- ``SeedXDetokenizer``: renders ``RenderJob``s to PNGs, batched across requests with ``@serve.batch``: jobs
  with the same stage, feature shape and options share one de-tokenizer call (at most ``max_batch_size``
  images), each row keeping its own seeded noise. Its LLMs are dropped after loading.
- ``SeedXIngress``: the FastAPI ingress, ``openai_api.create_app(settings, backend=RayBackend(...))``, so the
  API key, body and image limits, validation and error shapes are exactly the single-process API's.

Each deployment has its own ``num_replicas``, ``max_ongoing_requests`` and ``ray_actor_options`` (GPUs per
replica): ``RayOptions`` here, or the ``deployments`` section of a Serve config file.

Answers. Greedy chat and the LLM half of images are computed as in one process, so texts are equal. An image
rendered alone (a batch of one) is bit-identical to the single-process one at the same torch thread count
(``torch_threads``: CPU fp32 results depend on it, in one process too); rendered in a batch with other
requests it may differ by 1/255 in a few pixels (batched UNet matmuls round differently, as with
``SeedXEngine``'s micro-batching). ``n`` images of one request share one LLM pass (greedy decoding makes the
single process's ``n`` passes identical) and render as ``n`` rows with seeds ``seed``, ``seed + 1``, ...

Memory. With a chroma server (``--chroma HOST:PORT``, ``ServeSettings.chroma`` or ``SEEDX_CHROMA``) every
``SeedXLLM`` replica opens the one ``memory_dir`` in shared mode (``memory.shared``): records on the server, files
in the folder, which must be reachable by every replica (one node, or a filesystem with working ``flock``).
Without one, each replica opens its own folder, ``<memory_dir>-llm<slot>`` (the first slot whose lock is free, so
folders are reused across restarts). The API never reads or writes the memory (images arrive as data URLs;
``image_output="off"``), so neither choice changes an answer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import PIL.Image
import torch
from fastapi import FastAPI
from ray import serve

from seedx_agent.errors import CapabilityMissingError, CheckpointError, ConfigError

from .openai_api import (
    _SEED_LIMIT,
    ApiError,
    ChatEvent,
    ChatEvents,
    SeedXService,
    _chat_events,
    _ChatInput,
    _from_library,
    _png_b64,
    _Workers,
    create_app,
)
from .settings import ServeSettings

if TYPE_CHECKING:
    from ray.serve import Application
    from ray.serve.handle import DeploymentHandle

    from seedx_agent import SeedX

__all__ = [
    "APP_NAME",
    "RayBackend",
    "RayOptions",
    "RenderJob",
    "SeedXDetokenizer",
    "SeedXIngress",
    "SeedXLLM",
    "app_builder",
    "build_app",
    "run_ray",
]

logger = logging.getLogger(__name__)

APP_NAME = "seedx"
READY_TIMEOUT_S = 2.0  # how long /health waits for each deployment's ping
_VARIANTS = ("seed-x-i", "seed-x-edit")  # what ``seedx-agent serve`` loads (runtime.load_engine)
_MEMORY_SLOTS = 256


# ---------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class RayOptions:
    """How the deployments scale: replicas, actor resources (``{"num_gpus": 1}`` per replica) and batching."""

    llm_replicas: int = 1
    detok_replicas: int = 1
    ingress_replicas: int = 1
    llm_actor_options: dict[str, Any] = field(default_factory=lambda: {"num_cpus": 1})
    detok_actor_options: dict[str, Any] = field(default_factory=lambda: {"num_cpus": 1})
    ingress_actor_options: dict[str, Any] = field(default_factory=lambda: {"num_cpus": 0})
    llm_max_ongoing_requests: int = 8  # per replica; the engine runs one model call at a time, the rest queue
    detok_max_ongoing_requests: int = 32  # per replica; at least max_batch_size, so that batches can fill
    max_batch_size: int = 8  # images per de-tokenizer call (a request's n images count as n)
    batch_wait_timeout_s: float = 0.02  # how long a batch waits for more requests
    device: str = "auto"  # "auto": cuda when the replica has a GPU, else cpu
    torch_threads: int | None = None  # CPU threads per model replica (None: torch's default, Ray's OMP_NUM_THREADS)

    def check(self, settings: ServeSettings) -> None:
        """Refuse values Ray would only reject later (or that could never serve a request)."""
        for name in ("llm_replicas", "detok_replicas", "ingress_replicas", "max_batch_size", "torch_threads"):
            value = getattr(self, name)
            if value is None and name == "torch_threads":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_batch_size < settings.max_n:
            raise ConfigError(
                f"max_batch_size={self.max_batch_size} is smaller than max_n={settings.max_n}: a request for "
                "max_n images could never be rendered; raise max_batch_size or lower max_n"
            )
        if not (isinstance(self.batch_wait_timeout_s, (int, float)) and 0 <= self.batch_wait_timeout_s <= 10):
            raise ConfigError(f"batch_wait_timeout_s must be in [0, 10] seconds, got {self.batch_wait_timeout_s!r}")


def _device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def _set_threads(threads: int | None) -> None:
    """CPU results depend on the thread count (fp32 reduction order): compare runs at equal counts."""
    if threads is not None:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- loading


def load_side(spec: str | Path, side: Literal["llm", "detokenizer"], device: str = "auto") -> SeedX:
    """``SeedX`` for one side, as ``runtime.load_engine`` loads it: the ViT and LLMs on ``device`` with no
    de-tokenizer read (stand-ins take their place), or the de-tokenizers on ``device`` (the LLMs are read on
    the CPU and dropped: the loader needs an LLM, and random presets draw the de-tokenizers after the LLMs)."""
    from seedx_agent import SeedX

    device = _device(device)
    mine = ("vision", "llm") if side == "llm" else ("detokenizer",)
    device_map = {part: (device if part in mine else "cpu") for part in ("vision", "llm", "detokenizer")}
    try:
        if side == "llm":
            model = SeedX.from_pretrained(spec, variants=_VARIANTS, stages=(), device_map=device_map)
        else:
            model = SeedX.from_pretrained(spec, variants=_VARIANTS, device_map=device_map)
    except CheckpointError:
        if str(spec) != "mini":
            raise
        logger.warning("the miniature is not available; using 'tiny-random' (RANDOM weights), as `serve` does")
        return load_side("tiny-random", side, device)
    if side == "llm":
        record = threading.local()  # one per model: the stand-ins write the calling thread's RenderJob here
        model.parts.detokenizers = {stage: _DetokenizerStandIn(stage, record) for stage in (1, 2)}
    else:
        model.parts.lvlms.clear()
    return model


def _open_replica_memory(settings: ServeSettings, engine: Any) -> Any:
    """This replica's image memory: with a chroma server (``settings.chroma`` or ``SEEDX_CHROMA``) the one folder
    every replica shares (shared mode); otherwise the first free ``<memory_dir>-llm<slot>`` of its own."""
    from seedx_agent.graphs.runtime import open_memory, resolve_chroma
    from seedx_agent.memory import MemoryLockedError

    base = Path(settings.memory_dir).expanduser()
    chroma = resolve_chroma(settings.chroma)
    if chroma is not None:
        return open_memory(base, engine, chroma=chroma)
    for slot in range(_MEMORY_SLOTS):
        try:  # siblings of the single-process server's folder, never inside it
            return open_memory(base.with_name(f"{base.name}-llm{slot}"), engine)
        except MemoryLockedError:
            continue
    raise ConfigError(f"all {_MEMORY_SLOTS} memory folders {base}-llm<N> are in use; stop stale replicas")


# ---------------------------------------------------------------------------------------------- render jobs


@dataclass
class RenderJob:
    """What one request asks of the de-tokenizer: ``Detokenizer.generate``'s arguments, as ``SeedX`` passed them."""

    stage: int
    features: torch.Tensor  # (1, tokens, dim) on the CPU: the answer's first image
    negative: torch.Tensor  # (1, tokens, dim): the zero-image CFG negative
    condition: list[PIL.Image.Image] | None  # stage 2: the image being edited
    options: dict[str, Any]  # num_inference_steps, guidance_scale, scheduler, output_size, ...
    seeds: list[int | None]  # one image per seed

    def key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can share one de-tokenizer call."""
        shape = tuple(self.features.shape[1:])
        return (self.stage, shape, str(self.features.dtype), self.condition is None, *sorted(self.options.items()))


class _DetokenizerStandIn(torch.nn.Module):
    """Takes a de-tokenizer's place on the LLM replicas: records the call (``RenderJob``) instead of rendering."""

    def __init__(self, stage: int, record: threading.local) -> None:
        super().__init__()
        self.stage = stage
        self.record = record  # .job: the last call's RenderJob, per thread

    def generate(
        self,
        image_features: torch.Tensor,
        negative_features: torch.Tensor,
        *,
        generator: torch.Generator | Sequence[torch.Generator | None] | None = None,
        condition_images: Sequence[PIL.Image.Image] | None = None,
        **options: Any,
    ) -> list[PIL.Image.Image]:
        """Record the call in this thread; answer placeholder pictures (the real ones come from the de-tokenizer)."""
        batch = int(image_features.shape[0])
        generators = list(generator) if isinstance(generator, Sequence) else [generator] * batch
        options.pop("progress", None)
        self.record.job = RenderJob(
            stage=self.stage,
            features=image_features.detach().to("cpu"),
            negative=negative_features.detach().to("cpu"),
            condition=list(condition_images) if condition_images is not None else None,
            options=options,
            seeds=[g.initial_seed() if g is not None else None for g in generators],  # SeedX seeds fresh generators
        )
        return [PIL.Image.new("RGB", (1, 1))] * batch


def _api_error(error: BaseException) -> ApiError:
    """An exception from a deployment call as the ``ApiError`` the client gets (the replica's own error if any)."""
    cause = getattr(error, "cause", None)  # ray.exceptions.RayTaskError carries the replica's exception
    if isinstance(cause, BaseException):
        error = cause
    if isinstance(error, ApiError):
        return error
    from ray import exceptions as ray_errors
    from ray.serve.exceptions import BackPressureError

    if isinstance(error, BackPressureError):
        return ApiError(503, "the model replicas are busy; retry later", type="server_error", code="server_overloaded")
    if isinstance(error, (ray_errors.RayActorError, ray_errors.ActorUnavailableError)):
        logger.warning("a model replica failed: %s", error)
        return ApiError(503, "a model replica is unavailable; retry later", type="server_error", code="unavailable")
    return _from_library(error)


# ---------------------------------------------------------------------------------------------- deployments


@serve.deployment(name="SeedXLLM")
class SeedXLLM:
    """The ViT and the LLMs: chat completions and the LLM half of image requests (``RenderJob``s)."""

    def __init__(self, settings: ServeSettings, device: str = "auto", torch_threads: int | None = None) -> None:
        from seedx_agent import SeedXEngine

        started = time.perf_counter()
        _set_threads(torch_threads)
        self.settings = settings
        model = load_side(settings.model, "llm", device)
        self.record = next(iter(model.parts.detokenizers.values())).record
        engine = SeedXEngine(model)
        self.memory = _open_replica_memory(settings, engine)
        self.service = SeedXService(engine, self.memory, settings)
        self.workers = _Workers(settings.workers, settings.max_pending)
        logger.info("SeedXLLM replica ready (%.1f s)", time.perf_counter() - started)

    def ping(self) -> bool:
        """Readiness probe of the ingress's ``/health``: answered once a replica has loaded its model."""
        return True

    async def complete(self, chat: _ChatInput) -> tuple[Any, dict[str, int], int]:
        """(reply, usage, token budget) of a non-streamed completion."""
        reply, usage = await self.workers.run(self.service.complete, chat)
        return reply, usage, self.service.max_new_tokens(chat)

    async def chat_events(self, chat: _ChatInput) -> AsyncIterator[ChatEvent]:
        """The events of a streamed completion (``openai_api.ChatEvent``); stops decoding when cancelled."""
        self.workers.admit()
        events = _chat_events(self.service, self.workers, chat)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()

    async def render_job(
        self,
        kind: Literal["generate", "edit"],
        prompt: str,
        data: bytes | None,
        n: int,
        size: int | None,
        seed: int | None,
        steps: int | None,
    ) -> RenderJob:
        """The LLM half of a generation (or an edit of ``data``): what the de-tokenizer must render for ``n`` images."""
        base = seed if seed is not None else secrets.randbelow(_SEED_LIMIT - 64)
        return await self.workers.run(self._capture, kind, prompt, data, n, size, base, steps)

    def _capture(
        self, kind: str, prompt: str, data: bytes | None, n: int, size: int | None, base: int, steps: int | None
    ) -> RenderJob:
        self.record.job = None
        if kind == "edit":
            self.service.edit(data or b"", prompt, 1, size, base, steps)
        else:
            self.service.generate(prompt, 1, size, base, steps)
        job: RenderJob | None = self.record.job
        self.record.job = None
        if job is None:
            raise RuntimeError("the model rendered no image for this request")
        job.seeds = [base + index for index in range(n)]
        return job

    def __del__(self) -> None:
        memory = getattr(self, "memory", None)
        if memory is not None:
            memory.close()


def _rows(jobs: list[RenderJob]) -> int:
    return sum(len(job.seeds) for job in jobs)


@serve.deployment(name="SeedXDetokenizer")
class SeedXDetokenizer:
    """The de-tokenizers: ``RenderJob``s to PNGs (base64), batched across requests."""

    def __init__(
        self,
        settings: ServeSettings,
        device: str = "auto",
        max_batch_size: int = 8,
        batch_wait_timeout_s: float = 0.02,
        torch_threads: int | None = None,
    ) -> None:
        started = time.perf_counter()
        _set_threads(torch_threads)
        model = load_side(settings.model, "detokenizer", device)
        self.detokenizers = dict(model.parts.detokenizers)
        del model
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seedx-detok")
        self._render_batch.set_max_batch_size(max_batch_size)
        self._render_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batches: deque[int] = deque(maxlen=1000)  # requests per batch, of the last 1000 batches
        logger.info("SeedXDetokenizer replica ready (%.1f s)", time.perf_counter() - started)

    async def render(self, job: RenderJob) -> list[str]:
        """The job's images as PNG base64, rendered together with concurrent compatible jobs."""
        outcome = await self._render_batch(job)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def ping(self) -> bool:
        """Readiness probe of the ingress's ``/health``: answered once a replica has loaded its model."""
        return True

    def stats(self) -> dict[str, Any]:
        """The last batches run by this replica and the requests in each (tests and monitoring)."""
        return {"batches": len(self.batches), "requests_per_batch": list(self.batches)}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02, batch_size_fn=_rows)
    async def _render_batch(self, jobs: list[RenderJob]) -> list[list[str] | ApiError]:
        self.batches.append(len(jobs))
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._render_jobs, jobs)

    def _render_jobs(self, jobs: list[RenderJob]) -> list[list[str] | ApiError]:
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(job.key(), []).append(index)
        results: list[list[str] | ApiError] = [[] for _ in jobs]
        for members in groups.values():
            group = [jobs[i] for i in members]
            try:
                images = self._render_group(group)
            except Exception as error:
                for i in members:
                    results[i] = error if isinstance(error, ApiError) else _from_library(error)
                continue
            for i, job in zip(members, group):
                results[i], images = images[: len(job.seeds)], images[len(job.seeds) :]
        return results

    @torch.no_grad()
    def _render_group(self, jobs: list[RenderJob]) -> list[str]:
        """One ``Detokenizer.generate`` call for compatible jobs (a single job: exactly ``SeedX``'s call)."""
        first = jobs[0]
        detokenizer = self.detokenizers.get(first.stage)
        if detokenizer is None:
            raise CapabilityMissingError(
                f"the stage-{first.stage} de-tokenizer is not loaded on the de-tokenizer replicas (loaded stages: "
                f"{sorted(self.detokenizers)})"
            )
        rows = [(job, seed) for job in jobs for seed in job.seeds]
        features = torch.cat([job.features[:1] for job, _ in rows])
        if all(torch.equal(job.negative, first.negative) for job in jobs):
            negative = first.negative
        else:
            negative = torch.cat([job.negative[:1] for job, _ in rows])
        generators = [torch.Generator().manual_seed(seed) if seed is not None else None for _, seed in rows]
        options = dict(first.options)
        if first.condition is not None:  # stage 2 (a group's jobs all have one, or none: see RenderJob.key)
            options["condition_images"] = [job.condition[0] for job, _ in rows if job.condition]
        pictures = detokenizer.generate(
            features, negative, generator=generators[0] if len(rows) == 1 else generators, **options
        )
        return [_png_b64(picture) for picture in pictures]

    def __del__(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------------------------- the ingress


class RayBackend:
    """``openai_api.ModelBackend`` over the deployments: chat on ``SeedXLLM``, images on ``SeedXLLM`` (features)
    then ``SeedXDetokenizer`` (pixels); at most ``settings.max_pending`` requests in flight per ingress replica."""

    def __init__(self, settings: ServeSettings, llm: DeploymentHandle, detokenizer: DeploymentHandle) -> None:
        self.llm = llm
        self.detokenizer = detokenizer
        self.admission = _Workers(1, settings.max_pending)  # its counter only: the work runs on the replicas

    async def start(self) -> None:
        """Nothing to load here: the replicas load the model."""

    async def stop(self) -> None:
        """Nothing to release here."""

    async def ready(self) -> str | None:
        """None when a replica of each deployment answers a ping within ``READY_TIMEOUT_S``, else which do not
        (still loading, or never scheduled: e.g. more CPUs or GPUs asked for than the cluster has)."""
        missing = []
        for name, handle in (("SeedXLLM", self.llm), ("SeedXDetokenizer", self.detokenizer)):
            try:
                await asyncio.wait_for(handle.ping.remote(), READY_TIMEOUT_S)
            except Exception:  # timeout, no replica yet, replica dead: all mean "not ready"
                missing.append(name)
        return f"no running replica of {', '.join(missing)} yet" if missing else None

    async def _call(self, response: Any) -> Any:
        """Await a deployment call, with its errors as ``ApiError``."""
        try:
            return await response
        except Exception as error:
            raise _api_error(error) from None

    async def complete(self, chat: _ChatInput) -> tuple[Any, dict[str, int], int]:
        """A non-streamed completion on an LLM replica."""
        self.admission.admit()
        try:
            return await self._call(self.llm.complete.remote(chat))
        finally:
            self.admission.release()

    def stream(self, chat: _ChatInput) -> ChatEvents:
        """Admit now (503 before the stream starts) and start relaying the LLM replica's events."""
        self.admission.admit()
        queue: asyncio.Queue[ChatEvent] = asyncio.Queue()
        task = asyncio.get_running_loop().create_task(self._relay(chat, queue))
        return ChatEvents(queue, task.cancel)  # cancelled when the client goes: the replica stops decoding

    async def _relay(self, chat: _ChatInput, queue: asyncio.Queue[ChatEvent]) -> None:
        ended = False
        try:
            generator = self.llm.options(stream=True).chat_events.remote(chat)
            try:
                async for event in generator:
                    queue.put_nowait(event)
                    ended = event[0] != "text"
            except asyncio.CancelledError:
                generator.cancel()
                raise
        except Exception as error:
            queue.put_nowait(("error", _api_error(error)))
            ended = True
        finally:
            self.admission.release()
            if not ended:  # the replica's stream stopped without a last event
                queue.put_nowait(("error", ApiError(500, "the model stream ended early", type="server_error")))

    async def _images(
        self,
        kind: Literal["generate", "edit"],
        prompt: str,
        data: bytes | None,
        n: int,
        size: int | None,
        seed: int | None,
        steps: int | None,
    ) -> list[str]:
        self.admission.admit()
        try:
            job = await self._call(self.llm.render_job.remote(kind, prompt, data, n, size, seed, steps))
            return await self._call(self.detokenizer.render.remote(job))
        finally:
            self.admission.release()

    async def generate(self, prompt: str, n: int, size: int | None, seed: int | None, steps: int | None) -> list[str]:
        """Generated PNGs: features on an LLM replica, pixels on a de-tokenizer replica."""
        return await self._images("generate", prompt, None, n, size, seed, steps)

    async def edit(
        self, data: bytes, prompt: str, n: int, size: int | None, seed: int | None, steps: int | None
    ) -> list[str]:
        """Edited PNGs: features on an LLM replica, pixels on a de-tokenizer replica."""
        return await self._images("edit", prompt, data, n, size, seed, steps)


@serve.deployment(name="SeedXIngress")
@serve.ingress()
class SeedXIngress:
    """The HTTP ingress: the single-process API's FastAPI app over ``RayBackend``."""

    def __init__(self, settings: ServeSettings, llm: DeploymentHandle, detokenizer: DeploymentHandle) -> None:
        self.settings = settings
        self.llm = llm
        self.detokenizer = detokenizer

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Build the app in the replica (Ray calls this after ``__init__``)."""
        return create_app(self.settings, backend=RayBackend(self.settings, self.llm, self.detokenizer))


# ---------------------------------------------------------------------------------------------- building and running


def build_app(settings: ServeSettings, options: RayOptions | None = None) -> Application:
    """The Serve application: ingress -> (``SeedXLLM``, ``SeedXDetokenizer``), scaled by ``options``."""
    options = options or RayOptions()
    options.check(settings)
    llm = SeedXLLM.options(
        num_replicas=options.llm_replicas,
        ray_actor_options=dict(options.llm_actor_options),
        max_ongoing_requests=options.llm_max_ongoing_requests,
    ).bind(settings, options.device, options.torch_threads)
    detokenizer = SeedXDetokenizer.options(
        num_replicas=options.detok_replicas,
        ray_actor_options=dict(options.detok_actor_options),
        max_ongoing_requests=max(options.detok_max_ongoing_requests, options.max_batch_size),
    ).bind(settings, options.device, options.max_batch_size, options.batch_wait_timeout_s, options.torch_threads)
    return SeedXIngress.options(
        num_replicas=options.ingress_replicas,
        ray_actor_options=dict(options.ingress_actor_options),
        max_ongoing_requests=settings.max_pending,  # the app answers 503 beyond it, as in one process
    ).bind(settings, llm, detokenizer)


def app_builder(args: dict[str, Any]) -> Application:
    """``import_path`` target of a Serve config (``serving/ray_config.yaml``): ``args`` holds ``ServeSettings``
    and ``RayOptions`` fields; the API key defaults to ``$SEEDX_API_KEY``."""
    settings_names = {f.name for f in fields(ServeSettings)}
    option_names = {f.name for f in fields(RayOptions)}
    unknown = sorted(set(args) - settings_names - option_names)
    if unknown:
        raise ConfigError(f"unknown args {unknown}; use fields of ServeSettings or RayOptions")
    settings_args = {k: v for k, v in args.items() if k in settings_names}
    settings_args.setdefault("api_key", os.environ.get("SEEDX_API_KEY") or None)
    settings = ServeSettings(**settings_args)
    options = RayOptions(**{k: v for k, v in args.items() if k in option_names})
    return build_app(settings, options)


def run_ray(
    settings: ServeSettings,
    options: RayOptions | None = None,
    *,
    address: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM): a local Ray instance (``address=None``) or a cluster
    (``"auto"``, ``"ray://..."``); a local instance is shut down at the end, on a cluster only the app is deleted."""
    import ray

    options = options or RayOptions()
    options.check(settings)
    local = address is None
    if local:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
    else:
        ray.init(address=address)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if local:  # a cluster may autoscale; a local instance has what it has
            check_resources(options, ray.cluster_resources())
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(settings, options), name=APP_NAME, route_prefix="/", blocking=False)
        logger.info("serving %r on http://%s:%d (Ray Serve, %s)", settings.model_id, host, port, asdict(options))
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C/SIGTERM (``timeout -s INT`` signals the whole group) must not cut the shutdown short.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if local:
                logger.info("stopping Ray Serve and the local Ray instance")
                serve.shutdown()
                ray.shutdown()
            else:
                serve.delete(APP_NAME)
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous)


def check_resources(options: RayOptions, available: dict[str, float]) -> None:
    """``ConfigError`` when the deployments ask for more CPUs or GPUs than ``available`` (Ray's
    ``cluster_resources()``) holds: Ray would otherwise wait forever to schedule the replicas that do not fit."""
    wanted: dict[str, float] = {}
    parts: dict[str, list[str]] = {}
    for label, replicas, actor in (
        ("LLM", options.llm_replicas, options.llm_actor_options),
        ("de-tokenizer", options.detok_replicas, options.detok_actor_options),
        ("ingress", options.ingress_replicas, options.ingress_actor_options),
    ):
        for resource, key in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
            each = float(actor.get(key, 1 if key == "num_cpus" else 0))
            if each:
                wanted[resource] = wanted.get(resource, 0.0) + replicas * each
                parts.setdefault(resource, []).append(f"{replicas} {label} x {each:g}")
    for resource, total in wanted.items():
        have = float(available.get(resource, 0.0))
        if total > have + 1e-9:
            fix = (
                "--replica-cpus 0.5 (several replicas per core), fewer replicas"
                if resource == "CPU"
                else "fewer --llm-gpus/--detok-gpus (fractions share a GPU), fewer replicas"
            )
            raise ConfigError(
                f"the deployments ask for {total:g} {resource}s ({' + '.join(parts[resource])}) but this Ray "
                f"instance has {have:g}: Ray would never schedule the rest. Pass {fix}, or join a larger cluster "
                "(--ray-address)"
            )


def _raise_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt
