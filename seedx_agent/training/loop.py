"""The shared optimisation loop: AdamW, warm-up + cosine schedule, clipping, checkpoints and exact resume.

Every recipe hands the loop a ``step_fn(step) -> losses`` that builds its own batch from ``step`` (data
are a pure function of the step number and the seed), so resuming from a checkpoint replays exactly
the run that was interrupted. Checkpoints are safetensors (weights and optimiser moments) plus a JSON
state file, written into a temporary folder and renamed, so a kill at any moment leaves the previous
checkpoint intact. A time budget (``max_minutes``) stops a run cleanly after a checkpoint; calling
the recipe again continues it.

Data parallelism: launched with several processes (``torchrun --nproc_per_node N`` or ``accelerate
launch``), the process group is set up through accelerate (NCCL on GPUs, gloo on CPU); process ``r`` of
``N`` builds its batch with ``step_fn(step * N + r)``, gradients are averaged across processes before
clipping, and only process 0 writes logs and checkpoints. One process is exactly the plain loop.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from seedx_agent.errors import CheckpointError, ConfigError
from seedx_agent.weights.io import atomic_folder

__all__ = [
    "DistributedContext",
    "LoopConfig",
    "LoopResult",
    "distributed_context",
    "load_trainable_state",
    "lr_at",
    "run_loop",
    "trainable_state",
]

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
LOG_FILE = "log.jsonl"


@dataclass(frozen=True)
class LoopConfig:
    """Optimisation settings; the defaults are the official SFT ones (reference §12.2)."""

    steps: int
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every_s: float = 120.0  # wall-clock seconds between checkpoints
    log_every: int = 25
    max_minutes: float | None = None  # stop (with a checkpoint) after this much wall time in this call
    bf16: bool = False  # autocast to bfloat16 (GPU runs)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError("warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")


@dataclass
class LoopResult:
    """What a call of ``run_loop`` did: the step reached, whether the run is complete, the last losses."""

    step: int
    finished: bool
    losses: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a data-parallel run: rank, world size and the device it should train on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def distributed_context() -> DistributedContext:
    """Rank 0 of 1 on CPU outside a launcher; under ``torchrun``/``accelerate launch`` (``WORLD_SIZE`` > 1)
    the process group is initialised through accelerate if it is not already (NCCL with one GPU per
    process, gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())
        # Tear the group down before the interpreter does: left to exit, gloo's threads can abort the
        # process ("terminate called without an active exception") after the work is done.
        atexit.register(_destroy_process_group)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        on_gpu = torch.cuda.is_available()
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if on_gpu else torch.device("cpu")
        return DistributedContext(dist.get_rank(), dist.get_world_size(), device)
    return DistributedContext(0, 1, torch.device("cpu"))


# Gradients are averaged in flat buckets of at most this many elements (bounded extra memory).
_BUCKET_ELEMENTS = 1 << 24


def _average_gradients(params: Sequence[nn.Parameter], world_size: int) -> None:
    """All-reduce every parameter's gradient to the mean over processes; a missing gradient counts as 0
    (and is set), so that every process applies the same update."""
    bucket: list[nn.Parameter] = []
    size = 0

    def flush() -> None:
        nonlocal bucket, size
        if not bucket:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket])
        dist.all_reduce(flat)
        flat /= world_size
        offset = 0
        for p in bucket:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        bucket, size = [], 0

    for param in params:
        if size and size + param.numel() > _BUCKET_ELEMENTS:
            flush()
        bucket.append(param)
        size += param.numel()
    flush()


def lr_at(step: int, config: LoopConfig) -> float:
    """Linear warm-up to ``lr`` then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def trainable_state(modules: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Full state dicts of ``modules`` under ``name.`` prefixes, contiguous and detached for safetensors."""
    state = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            state[f"{name}.{key}"] = value.detach().contiguous().clone()
    return state


def load_trainable_state(modules: Mapping[str, nn.Module], state: Mapping[str, torch.Tensor]) -> None:
    """Inverse of ``trainable_state`` (strict: every key of every module must be present)."""
    for name, module in modules.items():
        prefix = f"{name}."
        own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        missing, unexpected = module.load_state_dict(own, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint does not match module {name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    full = optimizer.state_dict()
    tensors = {}
    for index, slots in full["state"].items():
        for key, value in slots.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{index}.{key}"] = tensor.detach().contiguous().clone()
    groups = [{k: v for k, v in group.items()} for group in full["param_groups"]]
    return tensors, groups


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], groups: list) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, slot = key.split(".", 1)
        state.setdefault(int(index), {})[slot] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _save_checkpoint(
    out_dir: Path,
    modules: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    step: int,
    config: LoopConfig,
    history: list[dict[str, float]],
) -> None:
    target = out_dir / CHECKPOINT_DIR
    with atomic_folder(target) as staging:
        save_file(trainable_state(modules), str(staging / "weights.safetensors"))
        tensors, groups = _optimizer_tensors(optimizer)
        save_file(tensors, str(staging / "optimizer.safetensors"))
        state = {"step": step, "param_groups": groups, "config": asdict(config), "history": history[-200:]}
        (staging / STATE_FILE).write_text(json.dumps(state))


def checkpoint_step(out_dir: str | Path) -> int | None:
    """The step of the checkpoint in ``out_dir`` (None when there is none)."""
    path = Path(out_dir) / CHECKPOINT_DIR / STATE_FILE
    if not path.is_file():
        return None
    return int(json.loads(path.read_text())["step"])


def _load_checkpoint(
    out_dir: Path, modules: Mapping[str, nn.Module], optimizer: torch.optim.Optimizer
) -> tuple[int, list[dict[str, float]]]:
    folder = out_dir / CHECKPOINT_DIR
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        load_trainable_state(modules, load_file(str(folder / "weights.safetensors")))
        _restore_optimizer(optimizer, load_file(str(folder / "optimizer.safetensors")), state["param_groups"])
    except (OSError, json.JSONDecodeError, KeyError, ValueError, SafetensorError) as exc:
        raise CheckpointError(
            f"cannot resume from {str(folder)!r}: {exc}; delete that folder to restart the stage from scratch"
        ) from exc
    return int(state["step"]), list(state.get("history", []))


def run_loop(
    name: str,
    out_dir: str | Path,
    modules: Mapping[str, nn.Module],
    parameters: Sequence[nn.Parameter],
    step_fn: Callable[[int], Mapping[str, torch.Tensor]],
    config: LoopConfig,
    *,
    progress: bool = True,
    on_checkpoint: Callable[[int], None] | None = None,
) -> LoopResult:
    """Optimise ``parameters`` for ``config.steps`` steps of ``step_fn`` (which returns a dict with a
    ``"loss"`` entry to minimise plus any components to log), resuming from ``out_dir`` if a
    checkpoint is there. ``modules`` are what a checkpoint saves (their full state dicts). Under a
    multi-process launcher the loop is data-parallel (module doc); ``step_fn`` must return the same keys
    on every process."""
    ctx = distributed_context()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise ConfigError(f"stage {name!r} has no trainable parameters")
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
    )
    step, history = 0, []
    if (out / CHECKPOINT_DIR / STATE_FILE).is_file():
        step, history = _load_checkpoint(out, modules, optimizer)
        logger.info("%s: resumed at step %d", name, step)
    if step >= config.steps:
        return LoopResult(step, True, history[-1] if history else {}, history)

    for module in modules.values():
        module.train()
    started = last_checkpoint = time.monotonic()
    bar = None
    if progress and ctx.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=step, desc=name, unit="step", dynamic_ncols=True)
    running: dict[str, float] = {}
    count = 0
    log_path = out / LOG_FILE
    device_type = params[0].device.type
    finished = False
    try:
        while step < config.steps:
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # noise, dropout: a function of the step (and of the process, in a data-parallel run)
            torch.manual_seed(config.seed * 1_000_003 + step + ctx.rank * 1_000_003_000)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=config.bf16):
                losses = step_fn(step * ctx.world_size + ctx.rank)
            loss = losses["loss"]
            values = {key: value.detach().float() for key, value in losses.items()}
            if ctx.world_size > 1:  # mean over processes: logged values, and one finite check for all
                stacked = torch.stack(list(values.values())).to(ctx.device)
                dist.all_reduce(stacked)
                values = dict(zip(values, (stacked / ctx.world_size).cpu()))
            if not torch.isfinite(values["loss"]):
                raise FloatingPointError(
                    f"{name}: loss became {float(values['loss'])} at step {step}; lower the learning rate or "
                    "check the data"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if ctx.world_size > 1:
                _average_gradients(params, ctx.world_size)
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            step += 1
            count += 1
            for key, value in values.items():
                running[key] = running.get(key, 0.0) + float(value)
            if bar is not None:
                bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                means = {k: v / count for k, v in running.items()}
                elapsed = time.monotonic() - started
                record = {"step": step, "lr": lr, **means, "elapsed_s": round(elapsed, 1)}
                history.append(record)
                if ctx.is_main:
                    with log_path.open("a") as log:
                        log.write(json.dumps(record) + "\n")
                if bar is not None:
                    bar.set_postfix({k: f"{v:.4f}" for k, v in means.items()})
                running, count = {}, 0
            now = time.monotonic()
            out_of_time = config.max_minutes is not None and now - started > 60 * config.max_minutes
            due = now - last_checkpoint > config.checkpoint_every_s
            if ctx.world_size > 1:  # clocks differ: every process follows the first to decide
                flags = torch.tensor([float(out_of_time), float(due)], device=ctx.device)
                dist.broadcast(flags, src=0)
                out_of_time, due = bool(flags[0]), bool(flags[1])
            if due or step == config.steps or out_of_time:
                if ctx.is_main:
                    _save_checkpoint(out, modules, optimizer, step, config, history)
                if ctx.world_size > 1:
                    dist.barrier()
                last_checkpoint = now
                if on_checkpoint is not None:
                    on_checkpoint(step)
            if out_of_time:
                break
        finished = step >= config.steps
    finally:
        if bar is not None:
            bar.close()
        for module in modules.values():
            module.eval()
    return LoopResult(step, finished, history[-1] if history else {}, history, time.monotonic() - started)
