"""Reading weights: state dicts (safetensors; pickle only by opt-in, ``weights_only``), strict assignment into
meta-built modules, finite checks and streamed sha256 with a per-process cache.

Everything loads strictly: a missing, unexpected or mis-shaped key raises ``StateDictMismatchError`` listing
all of them (the official code loads with ``strict=False`` and only prints counts, reference §13.4, §13.6).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
import uuid
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from seedx_agent.config import VARIANTS, DetokenizerConfig, SeedXConfig
from seedx_agent.errors import (
    CheckpointError,
    ConfigError,
    NonFiniteWeightError,
    StateDictMismatchError,
    UnsafeCheckpointError,
)
from seedx_agent.pipeline.components import SeedXComponents, build_components, stage_for_variant
from seedx_agent.pipeline.tokenizer import SeedXTokenizer

PICKLE_SUFFIXES: tuple[str, ...] = (".bin", ".pt", ".pth", ".ckpt")

_PICKLE_OPT_IN = "pass allow_pickle=True (CLI: --allow-pickle) if you trust its source"

# Weight file names tried in order inside a folder (HF and diffusers conventions; safetensors first).
_FOLDER_WEIGHTS: tuple[str, ...] = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin.index.json",
    "diffusion_pytorch_model.bin",
)

StateDict = dict[str, torch.Tensor]
_DtypeRule = torch.dtype | None | Literal["checkpoint"]


# =================================================================================================
# Reading state dicts
# =================================================================================================
def read_state_dict(path: str | Path, *, allow_pickle: bool = False) -> StateDict:
    """Read a checkpoint file, an HF/diffusers shard index, or a folder holding one of them.

    ``.safetensors`` is always allowed; pickle files (``.bin/.pt/.pth/.ckpt``) only with
    ``allow_pickle=True``, and even then through ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    if path.is_dir():
        return read_state_dict(_weights_in_folder(path), allow_pickle=allow_pickle)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    if path.name.endswith(".index.json"):
        return _read_sharded(path, allow_pickle=allow_pickle)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UnsafeCheckpointError(
                f"{str(path)!r} is a pickle checkpoint, which can run code when loaded; {_PICKLE_OPT_IN}, "
                "or convert it once to safetensors (seedx-agent convert)"
            )
        return _read_pickle(path)
    raise CheckpointError(
        f"{str(path)!r} has an unknown checkpoint format {suffix!r}; expected .safetensors, "
        f"{'/'.join(PICKLE_SUFFIXES)}, a *.index.json shard index or a folder"
    )


def _weights_in_folder(folder: Path) -> Path:
    for name in _FOLDER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    indexes = sorted(folder.glob("*.index.json"))
    singles = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", *PICKLE_SUFFIXES))
    for candidates in (indexes, singles):
        if len(candidates) == 1:
            return candidates[0]
    found = sorted(p.name for p in folder.iterdir())
    raise CheckpointError(
        f"no single checkpoint found in folder {str(folder)!r} (contents: {found[:20]}); expected one of "
        f"{list(_FOLDER_WEIGHTS)}, or exactly one *.index.json / weight file"
    )


def _read_safetensors(path: Path) -> StateDict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError for bad headers/offsets
        raise CheckpointError(
            f"cannot read safetensors file {str(path)!r}: {exc}; the file is truncated or corrupt, "
            "re-download or re-convert it"
        ) from exc


def _read_pickle(path: Path) -> StateDict:
    # mmap keeps a 10 GB shard out of RAM until its tensors are touched; only the zip format supports it.
    use_mmap = zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except Exception as exc:  # truncated zip, bad pickle, or objects that weights_only refuses
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read pickle checkpoint {str(path)!r}: {first_line}; the file is truncated, corrupt, or "
            "holds objects other than tensors"
        ) from exc
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        top = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{str(path)!r} does not hold a flat state dict (name -> tensor); top level: {top}")
    return dict(obj)


def _read_sharded(index_path: Path, *, allow_pickle: bool) -> StateDict:
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read shard index {str(index_path)!r}: {exc}") from exc
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"shard index {str(index_path)!r} has no 'weight_map' of key -> shard file name")
    folder = index_path.parent
    shards = sorted(set(weight_map.values()))
    unsafe = [s for s in shards if Path(s).name != s]
    if unsafe:
        raise CheckpointError(f"shard index {str(index_path)!r} names shards outside its folder: {unsafe[:5]}")
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        raise CheckpointError(f"shard index {str(index_path)!r} lists shard files that do not exist: {missing}")
    if not allow_pickle:
        pickled = [s for s in shards if Path(s).suffix.lower() in PICKLE_SUFFIXES]
        if pickled:
            raise UnsafeCheckpointError(
                f"{str(index_path)!r} points to pickle shards ({pickled[0]}, ...), which can run code when loaded; "
                f"{_PICKLE_OPT_IN}"
            )
    merged: StateDict = {}
    problems: list[str] = []
    for shard in shards:
        tensors = read_state_dict(folder / shard, allow_pickle=allow_pickle)
        listed = {k for k, v in weight_map.items() if v == shard}
        if set(tensors) - listed:
            problems.append(f"{shard} holds keys the index does not list: {sorted(set(tensors) - listed)[:5]}")
        if listed - set(tensors):
            problems.append(f"{shard} lacks keys the index assigns to it: {sorted(listed - set(tensors))[:5]}")
        merged.update({k: v for k, v in tensors.items() if k in listed})
    if problems:
        raise CheckpointError(f"shards disagree with {str(index_path)!r}: " + "; ".join(problems))
    return merged


# =================================================================================================
# Strict loading
# =================================================================================================
def _compile(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    return [re.compile(p) for p in patterns]


def _drop_ignored(state_dict: Mapping[str, torch.Tensor], ignore: Sequence[str]) -> StateDict:
    regexes = _compile(ignore)
    return {k: v for k, v in state_dict.items() if not any(r.search(k) for r in regexes)}


def check_state_dict(
    expected: Mapping[str, torch.Tensor | torch.Size | Sequence[int]],
    state_dict: Mapping[str, torch.Tensor],
    *,
    component: str,
    ignore: Sequence[str] = (),
) -> None:
    """Compare a checkpoint with the expected keys/shapes; raise one error listing every difference.

    ``ignore`` holds regexes of checkpoint keys that may be present without a model counterpart.
    """
    shapes = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in expected.items()}
    given = _drop_ignored(state_dict, ignore)
    missing = [k for k in shapes if k not in given]
    unexpected = [k for k in given if k not in shapes]
    mismatched = [
        (k, tuple(given[k].shape), shapes[k]) for k in shapes if k in given and tuple(given[k].shape) != shapes[k]
    ]
    if missing or unexpected or mismatched:
        raise StateDictMismatchError(component, missing=missing, unexpected=unexpected, mismatched=mismatched)


# IEEE exponent bits: a value is NaN or infinite exactly when all of them are set.
_EXPONENT_BITS: dict[torch.dtype, tuple[int, torch.dtype, type[np.unsignedinteger]]] = {
    torch.float16: (0x7C00, torch.int16, np.uint16),
    torch.bfloat16: (0x7F80, torch.int16, np.uint16),
    torch.float32: (0x7F800000, torch.int32, np.uint32),
    torch.float64: (0x7FF0000000000000, torch.int64, np.uint64),
}
_FINITE_CHUNK = 1 << 24  # elements per numpy pass: bounds the temporary to 16M words


def _has_non_finite(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` holds a NaN or an infinity (exact; on CPU a single-threaded numpy pass over the bits)."""
    known = _EXPONENT_BITS.get(tensor.dtype)
    if known is None or tensor.device.type != "cpu":
        return not bool(torch.isfinite(tensor).all())
    mask, signed, unsigned = known
    bits = tensor.detach().reshape(-1).view(signed).numpy().view(unsigned)
    for begin in range(0, bits.size, _FINITE_CHUNK):
        if int(np.bitwise_and(bits[begin : begin + _FINITE_CHUNK], unsigned(mask)).max()) == mask:
            return True
    return False


def check_finite_weights(state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Raise ``NonFiniteWeightError`` naming the first floating tensor of ``state_dict`` holding NaN or Inf.

    On CPU each tensor's exponent bits are checked with numpy (all set = NaN/Inf): exact, one pass, and
    single-threaded, so it stays cheap on a busy machine (~10-20 ms for the 36 MB of ``mini``, where
    ``isfinite(t).all()`` runs at ~0.5 GB/s); other devices and dtypes use ``torch.isfinite``.
    """
    for key, tensor in state_dict.items():
        if not tensor.is_floating_point() or tensor.is_meta or tensor.numel() == 0:
            continue
        if not _has_non_finite(tensor):
            continue
        with torch.no_grad():
            nan = int(torch.isnan(tensor).sum())
            inf = int(torch.isinf(tensor).sum())
        raise NonFiniteWeightError(
            f"tensor {key!r} of {source} holds {nan} NaN and {inf} infinite values out of {tensor.numel()}; "
            "the checkpoint is corrupt or was saved from a diverged run: re-download, re-convert or "
            "re-train it (check_finite=False loads it anyway)",
            tensor=key,
            source=source,
            nan=nan,
            inf=inf,
        )


def load_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    component: str,
    ignore: Sequence[str] = (),
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    copy_tensors: bool = False,
) -> None:
    """Load ``state_dict`` into ``module`` after checking that keys and shapes match exactly.

    Values are cast to the module's parameter dtype and keep its device. For tensors still on the
    ``meta`` device (a model built without memory) the checkpoint tensors are assigned instead of
    copied; ``device`` (default CPU) and ``dtype`` (default the module's) say where they go. Assigned
    tensors that need no conversion are shared with ``state_dict`` (as ``load_state_dict(assign=True)``)
    unless ``copy_tensors`` is set.
    """
    expected = module.state_dict(keep_vars=True)
    check_state_dict(expected, state_dict, component=component, ignore=ignore)
    _assign(module, _drop_ignored(state_dict, ignore), dtype=dtype, device=device, copy_tensors=copy_tensors)


def _assign(
    module: nn.Module,
    values: Mapping[str, torch.Tensor],
    *,
    dtype: _DtypeRule = None,
    device: str | torch.device | None = None,
    copy_tensors: bool = False,
) -> None:
    """Put already-checked ``values`` (a subset of the module's keys) into ``module``.

    Non-meta targets are copied into (``copy_`` casts dtype and device); as soon as one target is on
    meta, every value is converted to its final dtype/device and assigned. ``dtype="checkpoint"``
    keeps each tensor's stored dtype. ``copy_tensors`` clones values the conversion left untouched:
    pickles are read memory-mapped, and a model must not keep pages of a file that may be rewritten.
    """
    current = module.state_dict(keep_vars=True)
    if not any(current[k].is_meta for k in values):
        with torch.no_grad():
            module.load_state_dict(dict(values), strict=False)
        return
    target_device = torch.device(device) if device is not None else torch.device("cpu")
    converted: StateDict = {}
    for key, value in values.items():
        existing = current[key]
        if not existing.is_floating_point():
            want_dtype = existing.dtype
        elif dtype == "checkpoint":
            want_dtype = value.dtype if value.is_floating_point() else existing.dtype
        else:
            want_dtype = dtype or existing.dtype
        want_device = target_device if existing.is_meta else existing.device
        tensor = value.detach().to(device=want_device, dtype=want_dtype)
        if copy_tensors and tensor.untyped_storage().data_ptr() == value.untyped_storage().data_ptr():
            tensor = tensor.clone()
        converted[key] = tensor
    module.load_state_dict(converted, strict=False, assign=True)


def _meta_tensors(module: nn.Module) -> list[str]:
    names = [n for n, p in module.named_parameters() if p.is_meta]
    return names + [n for n, b in module.named_buffers() if b.is_meta]


def _prefixed(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in module.state_dict(keep_vars=True).items()}


def _strip(state_dict: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


# =================================================================================================
# Building empty components and finishing them
# =================================================================================================
def _build_empty(
    config: SeedXConfig, tokenizer: SeedXTokenizer, variants: Sequence[str], stages: Sequence[int]
) -> SeedXComponents:
    """Every requested part with parameters on ``meta`` and real (tiny) non-persistent buffers.

    Buffers such as the RoPE frequencies and the noise schedules are not in any checkpoint, so they
    are built for real; only parameters and persistent buffers wait for the checkpoint.
    """
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return build_components(config, tokenizer=tokenizer, variants=variants, stages=stages, seed=None, device="cpu")


def _finish(parts: SeedXComponents, device: str | torch.device) -> SeedXComponents:
    for name, module in parts.modules():
        left = _meta_tensors(module)
        if left:  # cannot happen after strict loading; guards against a loader bug
            raise CheckpointError(f"{name}: {len(left)} tensors were never loaded, e.g. {left[:5]}")
        nn.Module.to(module, device=device)  # moves the non-persistent buffers built on CPU
        module.eval()
    return parts


def _check_variants_stages(
    config: SeedXConfig, variants: Iterable[str] | None, stages: Iterable[int] | None
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    chosen = tuple(variants) if variants is not None else (config.variant,)
    if not chosen:
        raise ConfigError("at least one variant is needed, e.g. variants=('seed-x-i',)")
    for variant in chosen:
        if variant not in VARIANTS:
            raise ConfigError(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
    chosen_stages = (
        tuple(sorted(set(stages))) if stages is not None else tuple(sorted({stage_for_variant(v) for v in chosen}))
    )
    for stage in chosen_stages:
        if stage not in (1, 2):
            raise ConfigError(f"de-tokenizer stage must be 1 or 2, got {stage!r}")
    return chosen, chosen_stages


def _detokenizer_config(config: SeedXConfig, stage: int) -> DetokenizerConfig:
    return config.detokenizer if stage == 1 else config.edit_detokenizer


def _vae_keeps_fp32(vae_config: Mapping[str, Any] | None) -> bool:
    return bool(vae_config and vae_config.get("force_upcast", False))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# (resolved path, device, inode, size, mtime_ns, ctime_ns) -> sha256 of files hashed by this process. Any
# rewrite changes ctime (which, unlike mtime, cannot be set back), so a changed file is hashed again.
_FILE_HASHES: dict[tuple[str, int, int, int, int, int], str] = {}
_FILE_HASHES_LOCK = threading.Lock()


def _file_key(path: Path) -> tuple[str, int, int, int, int, int]:
    """The identity of a file's current contents as far as its metadata tells."""
    stat = path.stat()
    return (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def file_sha256(path: str | Path, *, cached: bool = True) -> str:
    """The sha256 of ``path``, remembered per (path, inode, size, mtime, ctime) so a second load is instant."""
    path = Path(path)
    key = _file_key(path)
    if cached:
        with _FILE_HASHES_LOCK:
            known = _FILE_HASHES.get(key)
        if known is not None:
            return known
    digest = _sha256(path)
    if _file_key(path) == key:  # unchanged while it was read: safe to remember
        with _FILE_HASHES_LOCK:
            _FILE_HASHES[key] = digest
    return digest


def clear_verified_files() -> None:
    """Forget every remembered file hash (the next verification reads the files again)."""
    with _FILE_HASHES_LOCK:
        _FILE_HASHES.clear()


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {what} {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} {str(path)!r} is not a JSON object")
    return data


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yield a staging folder beside ``target``; on success it takes ``target``'s place by renames (an old folder
    is retired, then deleted), on any failure it is deleted: readers see the old folder or the new, never half."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        if target.exists():
            retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            target.rename(retired)
            staging.rename(target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
