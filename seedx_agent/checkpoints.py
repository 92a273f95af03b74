"""Checkpoints: the official SEED-X release layout <-> our modules, and our own safetensors layout.

Everything here loads strictly: a missing, unexpected or mis-shaped key raises
``StateDictMismatchError`` listing all of them, where the official code loads with ``strict=False``
and only prints counts (reference §13.4, §13.6, §15). Pickle files (the whole official release) are
read only when the caller opts in with ``allow_pickle=True`` (CLI ``--allow-pickle``), and then with
``torch.load(weights_only=True)``. Our own layout is safetensors only.

Models are built on the ``meta`` device and the checkpoint tensors are assigned into them, so a
13B LLM is never allocated twice. Also here: dtype/device placement and bitsandbytes quantisation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import threading
import time
import uuid
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from seedx_agent.components import SeedXComponents, build_components, stage_for_variant
from seedx_agent.config import VARIANTS, DetokenizerConfig, LLMConfig, SeedXConfig, resolve_config
from seedx_agent.errors import (
    CheckpointError,
    ConfigError,
    CorruptCheckpointError,
    DependencyMissingError,
    NonFiniteWeightError,
    StateDictMismatchError,
    UnsafeCheckpointError,
)
from seedx_agent.tokenizer import SeedXTokenizer

__all__ = [
    "DETOKENIZER_FOLDER",
    "FORMAT_VERSION",
    "LLM_IGNORE",
    "PICKLE_SUFFIXES",
    "PLACEMENT_KEYS",
    "STAGE_FOLDERS",
    "TOKENIZER_FOLDER",
    "VARIANT_FOLDERS",
    "OfficialLayout",
    "VariantFiles",
    "check_finite_weights",
    "check_state_dict",
    "clear_verified_files",
    "convert_official",
    "describe",
    "file_sha256",
    "load_components",
    "load_official",
    "load_strict",
    "place",
    "quantize_llm",
    "read_state_dict",
    "save_components",
    "verify_files",
    "write_official_layout",
]

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES: tuple[str, ...] = (".bin", ".pt", ".pth", ".ckpt")
TOKENIZER_FOLDER = "cvlm_llama2_tokenizer_100img_and_224loc_addpatch"
VARIANT_FOLDERS: dict[str, str] = {"seed-x": "seed_x", "seed-x-i": "seed_x_i", "seed-x-edit": "seed_x_edit"}
DETOKENIZER_FOLDER = "seed_detokenizer"
STAGE_FOLDERS: dict[int, str] = {1: "first_stage", 2: "second_stage"}
DEFAULT_VIT = Path("QwenViT") / "qwen_vit_G.pt"
DEFAULT_SDXL = "stable-diffusion-xl-base-1.0"
# transformers 4.30 saved the RoPE frequencies as a buffer in every layer; they are recomputed, not loaded.
LLM_IGNORE: tuple[str, ...] = (r"(^|\.)rotary_emb\.inv_freq$",)
# The stage-1 file holds exactly these UNet weights (all self- and cross-attention keys/values, §9.3).
_OVERLAY_RE = re.compile(r"\.attn[12]\.to_[kv]\.weight$")
FORMAT_VERSION = 1
_FORMAT_NAME = "seedx-agent"
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


# =================================================================================================
# The official layout (§13.1)
# =================================================================================================
@dataclass(frozen=True)
class VariantFiles:
    """Where one LLM variant lives in the official release: an HF ``llm/`` folder and the agent file."""

    folder: Path
    llm: Path
    agent: Path


def _first_existing(folder: Path, names: Sequence[str]) -> Path:
    for name in names:
        if (folder / name).exists():
            return folder / name
    return folder / names[0]


@dataclass(frozen=True)
class OfficialLayout:
    """Paths of an official SEED-X download (``pretrained/`` in the official scripts, §13.1).

    Paths are computed whether or not they exist; ``missing``/``require`` check the ones a load needs.
    """

    root: Path
    tokenizer: Path
    variants: dict[str, VariantFiles]
    stages: dict[int, Path]
    vit: Path
    sdxl: Path

    @classmethod
    def discover(
        cls, root: str | Path, *, vit_path: str | Path | None = None, sdxl_path: str | Path | None = None
    ) -> OfficialLayout:
        """Find the official folders under ``root``; the ViT and SDXL base may live elsewhere."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise CheckpointError(
                f"official checkpoint folder {str(root)!r} does not exist; point it at the folder that holds "
                f"{VARIANT_FOLDERS['seed-x-i']}/, {DETOKENIZER_FOLDER}/ and {TOKENIZER_FOLDER}/"
            )
        variants = {}
        for variant, name in VARIANT_FOLDERS.items():
            folder = root / name
            agent = _first_existing(
                folder / "agent", ("pytorch_model.bin", "model.safetensors", "pytorch_model.safetensors")
            )
            variants[variant] = VariantFiles(folder=folder, llm=folder / "llm", agent=agent)
        stages = {
            stage: _first_existing(
                root / DETOKENIZER_FOLDER / name,
                ("pytorch_model.bin", "model.safetensors", "pytorch_model.safetensors"),
            )
            for stage, name in STAGE_FOLDERS.items()
        }
        vit = Path(vit_path).expanduser() if vit_path is not None else root / DEFAULT_VIT
        sdxl = Path(sdxl_path).expanduser() if sdxl_path is not None else root / DEFAULT_SDXL
        return cls(root=root, tokenizer=root / TOKENIZER_FOLDER, variants=variants, stages=stages, vit=vit, sdxl=sdxl)

    # -- SDXL base parts -----------------------------------------------------------------------
    def sdxl_weights(self, part: str) -> Path:
        """The weight file (or shard index) of the SDXL ``unet`` or ``vae`` folder."""
        stem = "diffusion_pytorch_model"
        return _first_existing(
            self.sdxl / part,
            (
                f"{stem}.safetensors",
                f"{stem}.safetensors.index.json",
                f"{stem}.bin",
                f"{stem}.bin.index.json",
                f"{stem}.fp16.safetensors",
            ),
        )

    @property
    def scheduler_config(self) -> Path:
        return self.sdxl / "scheduler" / "scheduler_config.json"

    def available_variants(self) -> tuple[str, ...]:
        return tuple(v for v in VARIANTS if not self._missing_variant(v))

    def available_stages(self) -> tuple[int, ...]:
        return tuple(s for s, path in self.stages.items() if path.is_file())

    # -- completeness --------------------------------------------------------------------------
    def _missing_variant(self, variant: str) -> list[str]:
        files = self.variants[variant]
        missing = []
        if not (files.llm / "config.json").is_file():
            missing.append(f"{files.llm / 'config.json'} (LLM config of {variant})")
        if not any((files.llm / name).is_file() for name in _FOLDER_WEIGHTS[:4]):
            missing.append(f"{files.llm / 'pytorch_model.bin.index.json'} (LLM weights of {variant})")
        if not files.agent.is_file():
            missing.append(f"{files.agent} (agent file of {variant}: resamplers + patch_pos_embed)")
        return missing

    def missing(self, variants: Sequence[str], stages: Sequence[int], *, need_vae: bool = True) -> list[str]:
        """Paths that a load of ``variants`` and ``stages`` needs but that do not exist."""
        missing = []
        for name in ("tokenizer.model", "added_tokens.json"):
            if not (self.tokenizer / name).is_file():
                missing.append(f"{self.tokenizer / name} (tokenizer)")
        if not self.vit.is_file():
            missing.append(
                f"{self.vit} (Qwen-VL ViT, made by the official src/tools/reload_qwen_vit.py; or pass vit_path)"
            )
        for variant in variants:
            missing.extend(self._missing_variant(variant))
        for stage in stages:
            if not self.stages[stage].is_file():
                missing.append(f"{self.stages[stage]} (de-tokenizer stage {stage})")
        sdxl_hint = "SDXL base in diffusers layout; or pass sdxl_path"
        sdxl_parts = (["unet"] if 1 in stages else []) + (["vae"] if stages and need_vae else [])
        for part in sdxl_parts:
            if not (self.sdxl / part / "config.json").is_file():
                missing.append(f"{self.sdxl / part / 'config.json'} ({sdxl_hint})")
            if not self.sdxl_weights(part).is_file():
                missing.append(f"{self.sdxl_weights(part)} ({sdxl_hint})")
        if stages and not self.scheduler_config.is_file():
            missing.append(f"{self.scheduler_config} ({sdxl_hint})")
        return missing

    def require(self, variants: Sequence[str], stages: Sequence[int], *, need_vae: bool = True) -> None:
        """Raise ``CheckpointError`` listing every missing path for the requested variants/stages."""
        missing = self.missing(variants, stages, need_vae=need_vae)
        if missing:
            raise CheckpointError(
                f"the official checkpoint searched under {str(self.root)!r} is incomplete for variants "
                f"{list(variants)} and de-tokenizer stages {list(stages)}; missing:\n  - "
                + "\n  - ".join(missing)
                + "\nDownload the missing parts (AILab-CVC/SEED-X-17B, stabilityai/stable-diffusion-xl-base-1.0) "
                "or request fewer variants/stages."
            )


# -- config checks ---------------------------------------------------------------------------------
def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {what} {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} {str(path)!r} is not a JSON object")
    return data


def _check_llm_config(path: Path, llm: LLMConfig) -> None:
    """The HF ``config.json`` must describe the same LLaMA geometry as ``config.llm`` (§5.1)."""
    hf = _read_json(path, "LLM config")
    heads = hf.get("num_attention_heads")
    pairs: list[tuple[str, Any, str, Any]] = [
        ("hidden_size", hf.get("hidden_size"), "hidden_size", llm.hidden_size),
        ("num_hidden_layers", hf.get("num_hidden_layers"), "num_layers", llm.num_layers),
        ("num_attention_heads", heads, "num_heads", llm.num_heads),
        ("num_key_value_heads", hf.get("num_key_value_heads", heads), "num_kv_heads", llm.num_kv_heads),
        ("intermediate_size", hf.get("intermediate_size"), "intermediate_size", llm.intermediate_size),
        ("vocab_size", hf.get("vocab_size"), "vocab_size", llm.vocab_size),
    ]
    # Not geometry, but they change the maths; 4.30-era files omit rope_theta (then it is 10000).
    if "rms_norm_eps" in hf:
        pairs.append(("rms_norm_eps", hf["rms_norm_eps"], "rms_norm_eps", llm.rms_norm_eps))
    if "rope_theta" in hf:
        pairs.append(("rope_theta", hf["rope_theta"], "rope_theta", llm.rope_theta))
    bad = [(hk, hv, ck, cv) for hk, hv, ck, cv in pairs if hv != cv]
    if bad:
        details = "; ".join(
            f"{hk} is {hv!r} in the file but llm.{ck} is {cv!r} in the config" for hk, hv, ck, cv in bad
        )
        raise ConfigError(
            f"LLM config {str(path)!r} does not match the SeedXConfig: {details}. Use the preset that belongs to "
            "this checkpoint (seed-x / seed-x-i / seed-x-edit for the official release), or pass config= a "
            "SeedXConfig describing a non-standard geometry."
        )
    if hf.get("rope_scaling") not in (None, {}):
        raise ConfigError(f"LLM config {str(path)!r} sets rope_scaling={hf['rope_scaling']!r}; SEED-X uses plain RoPE")
    if hf.get("pretraining_tp", 1) != 1:
        # pretraining_tp only slices the matmuls (same maths, §5.1); our LLM is always built with 1.
        logger.info(
            "%s: pretraining_tp=%s is ignored (forced to 1, mathematically identical)", path, hf["pretraining_tp"]
        )


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def _check_diffusers_config(path: Path, ours: Mapping[str, Any], what: str, skip: Sequence[str] = ()) -> None:
    """Every key of our diffusers config (bar ``skip``) must have the same value in the folder's config."""
    theirs = _read_json(path, f"{what} config")
    bad = [
        (key, theirs.get(key, "<absent>"), value)
        for key, value in ours.items()
        if key not in skip and _normalise(theirs.get(key, "<absent>")) != _normalise(value)
    ]
    if bad:
        details = "; ".join(f"{k} is {a!r} in the file but {b!r} in the config" for k, a, b in bad)
        raise ConfigError(f"{what} config {str(path)!r} does not match the SeedXConfig: {details}")


def _check_scheduler_config(path: Path, ours: Mapping[str, Any]) -> None:
    """The scheduler config must be readable; differences from ours are reported, ours is used."""
    theirs = _read_json(path, "scheduler config")
    differ = {k: (theirs[k], v) for k, v in ours.items() if k in theirs and _normalise(theirs[k]) != _normalise(v)}
    if differ:
        logger.warning("scheduler config %s differs from the SeedXConfig (file, config): %s", path, differ)


# Old diffusers files name the VAE mid-block attention query/key/value/proj_attn (diffusers renames too).
_OLD_VAE_ATTENTION = re.compile(r"^((?:encoder|decoder)\.mid_block\.attentions\.\d+\.)(query|key|value|proj_attn)\.")
_NEW_VAE_ATTENTION = {"query": "to_q.", "key": "to_k.", "value": "to_v.", "proj_attn": "to_out.0."}


def _rename_old_vae_keys(state_dict: StateDict) -> StateDict:
    renamed = {}
    for key, value in state_dict.items():
        match = _OLD_VAE_ATTENTION.match(key)
        if match:
            key = match.group(1) + _NEW_VAE_ATTENTION[match.group(2)] + key[match.end() :]
        renamed[key] = value
    return renamed


# -- loading the official release ----------------------------------------------------------------------
def load_official(
    layout: OfficialLayout,
    config: SeedXConfig,
    *,
    variants: Iterable[str] | None = None,
    stages: Iterable[int] | None = None,
    allow_pickle: bool = False,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    check_finite: bool = True,
) -> SeedXComponents:
    """Load the official release strictly into our modules (reference §13).

    ``variants`` default to ``config.variant``; ``stages`` to the de-tokenizer stages those variants use.
    ``dtype`` None keeps float32 (the release's dtype); the SDXL VAE stays float32 when its config
    sets ``force_upcast``. The official files are pickles: pass ``allow_pickle=True`` to read them.
    ``check_finite`` refuses NaN/Inf weights (``NonFiniteWeightError``); the release has no checksums.
    """
    started = time.perf_counter()
    variants, stages = _check_variants_stages(config, variants, stages)
    need_vae = any(_detokenizer_config(config, s).vae is not None for s in stages)
    layout.require(variants, stages, need_vae=need_vae)
    # Cheap checks first: a wrong preset should fail before gigabytes are read.
    for variant in variants:
        _check_llm_config(layout.variants[variant].llm / "config.json", config.llm)
    if 1 in stages:
        _check_diffusers_config(
            layout.sdxl / "unet" / "config.json", config.detokenizer.unet, "SDXL UNet", skip=("sample_size",)
        )
    if need_vae:
        vae_config = next(_detokenizer_config(config, s).vae for s in stages if _detokenizer_config(config, s).vae)
        _check_diffusers_config(layout.sdxl / "vae" / "config.json", vae_config, "SDXL VAE", skip=("sample_size",))
    if stages:
        _check_scheduler_config(layout.scheduler_config, config.detokenizer.scheduler)

    tokenizer = SeedXTokenizer.from_folder(layout.tokenizer)
    parts = _build_empty(config, tokenizer, variants, stages)

    def read(path: Path) -> StateDict:
        state = read_state_dict(path, allow_pickle=allow_pickle)
        if check_finite:
            check_finite_weights(state, source=repr(str(path)))
        return state

    vit_state = read(layout.vit)
    load_strict(parts.vision, vit_state, component=f"ViT ({layout.vit})", dtype=dtype, device=device, copy_tensors=True)
    del vit_state

    for variant, lvlm in parts.lvlms.items():
        files = layout.variants[variant]
        llm_state = read(files.llm)
        load_strict(
            lvlm.llm,
            llm_state,
            component=f"LLM of {variant} ({files.llm})",
            ignore=LLM_IGNORE,
            dtype=dtype,
            device=device,
            copy_tensors=True,
        )
        del llm_state
        agent_state = read(files.agent)
        agent_expected = {k: v for k, v in lvlm.state_dict(keep_vars=True).items() if not k.startswith("llm.")}
        check_state_dict(agent_expected, agent_state, component=f"agent of {variant} ({files.agent})")
        _assign(lvlm, agent_state, dtype=dtype, device=device, copy_tensors=True)
        del agent_state

    vae_state: StateDict = {}
    if need_vae:
        vae_state = _rename_old_vae_keys(read(layout.sdxl_weights("vae")))
    for stage, detokenizer in sorted(parts.detokenizers.items()):
        path = layout.stages[stage]
        stage_state = read(path)
        resampler_expected = _prefixed(detokenizer.resampler, "resampler.")
        if stage == 1:
            unet_expected = detokenizer.unet.state_dict(keep_vars=True)
            overlay_expected = {f"unet.{k}": v for k, v in unet_expected.items() if _OVERLAY_RE.search(k)}
            check_state_dict(
                {**resampler_expected, **overlay_expected},
                stage_state,
                component=f"de-tokenizer stage 1 ({path}): resampler + every attn1/attn2 to_k/to_v of the UNet",
            )
            unet_path = layout.sdxl_weights("unet")
            unet_state = read(unet_path)
            check_state_dict(unet_expected, unet_state, component=f"SDXL UNet ({unet_path})")
            unet_state.update(_strip(stage_state, "unet."))  # the trained to_k/to_v replace the stock ones
            _assign(detokenizer.unet, unet_state, dtype=dtype, device=device, copy_tensors=True)
            del unet_state
        else:
            check_state_dict(
                {**resampler_expected, **_prefixed(detokenizer.unet, "unet.")},
                stage_state,
                component=f"de-tokenizer stage 2 ({path}): resampler + the whole 8-channel UNet",
            )
            _assign(detokenizer.unet, _strip(stage_state, "unet."), dtype=dtype, device=device, copy_tensors=True)
        _assign(detokenizer.resampler, _strip(stage_state, "resampler."), dtype=dtype, device=device, copy_tensors=True)
        del stage_state
        if detokenizer.vae is not None:  # both stages share the SDXL VAE file; each gets its own tensors
            vae_dtype = None if _vae_keeps_fp32(detokenizer.config.vae) else dtype
            load_strict(
                detokenizer.vae,
                vae_state,
                component=f"SDXL VAE ({layout.sdxl_weights('vae')})",
                dtype=vae_dtype,
                device=device,
                copy_tensors=True,
            )
    _finish(parts, device)
    logger.info(
        "loaded the official checkpoint %s (variants %s, stages %s) in %.1f s",
        layout.root,
        list(variants),
        list(stages),
        time.perf_counter() - started,
    )
    return parts


# =================================================================================================
# Our layout: safetensors + manifest
# =================================================================================================
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


def _tensors_for_saving(module: nn.Module, name: str) -> StateDict:
    """Detached, contiguous CPU tensors; tensors that share storage are cloned (safetensors refuses them)."""
    meta = _meta_tensors(module)
    if meta:
        raise CheckpointError(
            f"cannot save {name}: {len(meta)} tensors are on the meta device (never loaded), e.g. {meta[:3]}"
        )
    seen: set[int] = set()
    out: StateDict = {}
    for key, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:
            tensor = tensor.clone()
        seen.add(pointer)
        out[key] = tensor
    return out


def _save_safetensors(module: nn.Module, name: str, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_tensors_for_saving(module, name), str(path), metadata={"format": "pt", "component": name})


def _component_files(variants: Iterable[str], stages: Iterable[int]) -> dict[str, str]:
    files = {"vision": "vision.safetensors"}
    files.update({f"lvlm:{v}": f"lvlm/{v}.safetensors" for v in variants})
    files.update({f"detokenizer:{s}": f"detokenizer/stage{s}.safetensors" for s in stages})
    return files


def _variant_aliases(lvlms: dict[str, Any]) -> dict[str, str]:
    """Variants that are the very same module as an earlier one (one LLM serving several roles, as in
    the miniature) -> the variant whose file stores it; saved once, shared again on load."""
    aliases: dict[str, str] = {}
    seen: dict[int, str] = {}
    for variant, module in lvlms.items():
        if id(module) in seen:
            aliases[variant] = seen[id(module)]
        else:
            seen[id(module)] = variant
    return aliases


def save_components(parts: SeedXComponents, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``parts`` in our layout (safetensors + config + tokenizer + manifest with sha256).

    The folder is assembled under a temporary name beside it and renamed at the end, so a crash
    never leaves a half-written checkpoint behind.
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not overwrite:
        raise CheckpointError(f"{str(folder)!r} already exists; pass overwrite=True or choose a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        parts.config.save(staging / "config.json")
        parts.tokenizer.save(staging / "tokenizer")
        aliases = _variant_aliases(parts.lvlms)
        stored = [v for v in parts.lvlms if v not in aliases]
        files = _component_files(stored, parts.detokenizers)
        modules = dict(parts.modules())
        for name, relative in files.items():
            _save_safetensors(modules[name], name, staging / relative)
        listed = sorted(p for p in staging.rglob("*") if p.is_file())
        manifest = {
            "format": _FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "config_name": parts.config.name,
            "variants": list(parts.lvlms),
            "variant_aliases": aliases,
            "stages": sorted(parts.detokenizers),
            "components": files,
            "files": {
                p.relative_to(staging).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in listed
            },
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        written = {relative: entry["sha256"] for relative, entry in manifest["files"].items()}
        if folder.exists():
            retired = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
            folder.rename(retired)
            staging.rename(folder)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with _FILE_HASHES_LOCK:  # just hashed while writing: loading this folder again needs no second read
        _FILE_HASHES.update({_file_key(folder / relative): digest for relative, digest in written.items()})
    logger.info("saved %s (variants %s, stages %s)", folder, list(parts.lvlms), sorted(parts.detokenizers))
    return folder


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    if not path.is_file():
        raise CheckpointError(
            f"{str(folder)!r} is not a seedx-agent checkpoint (no manifest.json); for the official release use "
            "load_official / `seedx-agent convert`"
        )
    manifest = _read_json(path, "manifest")
    if manifest.get("format") != _FORMAT_NAME or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{str(path)!r} is not a seedx-agent manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has format_version {manifest.get('format_version')!r}; this version reads "
            f"{FORMAT_VERSION}. Upgrade seedx-agent or re-convert the checkpoint."
        )
    return manifest


def verify_files(folder: str | Path, relatives: Iterable[str] | None = None) -> None:
    """Check files of a ``save_components`` folder (default: all the manifest lists) against its manifest.

    Sizes first (a truncated file fails without being read), then sha256 (``file_sha256``, remembered for
    unchanged files). Raises ``CorruptCheckpointError`` naming the first file that differs.
    """
    folder = Path(folder).expanduser()
    manifest = _read_manifest(folder)
    _verify_files(folder, manifest, list(manifest["files"]) if relatives is None else relatives)


def _verify_files(folder: Path, manifest: Mapping[str, Any], relatives: Iterable[str]) -> None:
    entries: list[tuple[Path, Mapping[str, Any]]] = []
    for relative in relatives:
        entry = manifest["files"].get(relative)
        if not isinstance(entry, Mapping):
            raise CheckpointError(f"manifest of {str(folder)!r} does not list {relative!r}")
        path = folder / relative
        if not path.is_file():
            raise CheckpointError(f"{str(path)!r} is listed in the manifest but missing")
        entries.append((path, entry))
    fix = "re-copy or re-convert the checkpoint (verify=False loads it anyway)"
    for path, entry in entries:
        size, expected = path.stat().st_size, entry.get("bytes")
        if isinstance(expected, int) and size != expected:
            raise CorruptCheckpointError(
                f"{str(path)!r} is corrupt: {size} bytes where the manifest lists {expected} (truncated or "
                f"overwritten); {fix}",
                path=str(path),
                expected=f"{expected} bytes",
                actual=f"{size} bytes",
            )
    for path, entry in entries:
        actual, expected_hash = file_sha256(path), str(entry.get("sha256"))
        if actual != expected_hash:
            raise CorruptCheckpointError(
                f"{str(path)!r} is corrupt: sha256 {actual[:16]}... differs from the manifest's "
                f"{expected_hash[:16]}...; {fix}",
                path=str(path),
                expected=expected_hash,
                actual=actual,
            )


def load_components(
    folder: str | Path,
    *,
    variants: Iterable[str] | None = None,
    stages: Iterable[int] | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    verify: bool = True,
    check_finite: bool = True,
) -> SeedXComponents:
    """Load a folder written by ``save_components`` (our layout; never pickle).

    ``variants``/``stages`` None load everything stored (stages: those the chosen variants use when
    only ``variants`` is given). ``dtype`` None keeps the stored dtypes bit for bit. ``verify`` (default)
    checks every file read against the manifest's size and sha256 first (``CorruptCheckpointError``; hashes
    of unchanged files are remembered, so a second load reads nothing twice); ``check_finite`` (default)
    refuses NaN/Inf weights (``NonFiniteWeightError`` naming the tensor).
    """
    started = time.perf_counter()
    folder = Path(folder).expanduser()
    manifest = _read_manifest(folder)
    stored_variants = list(manifest.get("variants", []))
    stored_stages = [int(s) for s in manifest.get("stages", [])]
    chosen_variants = tuple(variants) if variants is not None else tuple(stored_variants)
    absent = [v for v in chosen_variants if v not in stored_variants]
    if absent:
        raise CheckpointError(f"{str(folder)!r} holds variants {stored_variants}, not {absent}")
    if stages is not None:
        chosen_stages = tuple(sorted(set(stages)))
    elif variants is not None:
        chosen_stages = tuple(sorted({stage_for_variant(v) for v in chosen_variants} & set(stored_stages)))
    else:
        chosen_stages = tuple(stored_stages)
    absent_stages = [s for s in chosen_stages if s not in stored_stages]
    if absent_stages:
        raise CheckpointError(f"{str(folder)!r} holds de-tokenizer stages {stored_stages}, not {absent_stages}")

    aliases = {k: v for k, v in manifest.get("variant_aliases", {}).items() if k in chosen_variants}
    built_variants = tuple(dict.fromkeys(aliases.get(v, v) for v in chosen_variants))
    files = _component_files(built_variants, chosen_stages)
    if verify:
        extra = [r for r in manifest["files"] if r == "config.json" or r.startswith("tokenizer/")]
        _verify_files(folder, manifest, [*extra, *files.values()])
    config = SeedXConfig.load(folder / "config.json")
    tokenizer = SeedXTokenizer.from_folder(folder / "tokenizer")
    parts = _build_empty(config, tokenizer, built_variants, chosen_stages)
    rule: _DtypeRule = dtype if dtype is not None else "checkpoint"
    for name, module in parts.modules():
        path = folder / files[name]
        state = read_state_dict(path)
        check_state_dict(module.state_dict(keep_vars=True), state, component=f"{name} ({path})")
        if check_finite:
            check_finite_weights(state, source=f"{name} ({str(path)!r})")
        if name.startswith("detokenizer:") and module.vae is not None and dtype is not None:
            vae_rule: _DtypeRule = "checkpoint" if _vae_keeps_fp32(module.config.vae) else dtype
            _assign(module.vae, _strip(state, "vae."), dtype=vae_rule, device=device)
            state = {k: v for k, v in state.items() if not k.startswith("vae.")}
        _assign(module, state, dtype=rule, device=device)
        del state
    _finish(parts, device)
    if aliases:  # re-key in the order asked for, sharing the stored module
        stored = parts.lvlms
        parts.lvlms = {v: stored[aliases.get(v, v)] for v in chosen_variants}
    logger.info("loaded %s in %.1f s", folder, time.perf_counter() - started)
    return parts


def convert_official(
    root: str | Path,
    out: str | Path,
    *,
    variants: Iterable[str] | None = None,
    stages: Iterable[int] | None = None,
    allow_pickle: bool = False,
    vit_path: str | Path | None = None,
    sdxl_path: str | Path | None = None,
    config: SeedXConfig | str | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Official release -> our safetensors layout (``seedx-agent convert``); returns the new folder.

    ``config`` (a ``SeedXConfig`` for a non-standard geometry, or a preset name) defaults to the official
    preset of the first variant (all three share one geometry); it is written as the folder's config.json.
    """
    chosen = tuple(variants) if variants is not None else ("seed-x-i",)
    if config is None and (not chosen or chosen[0] not in VARIANTS):
        raise ConfigError(f"unknown variant {chosen[0] if chosen else None!r}; choose from {list(VARIANTS)}")
    config = resolve_config(config, default=chosen[0] if chosen else "seed-x-i")
    layout = OfficialLayout.discover(root, vit_path=vit_path, sdxl_path=sdxl_path)
    parts = load_official(layout, config, variants=chosen, stages=stages, allow_pickle=allow_pickle, dtype=dtype)
    return save_components(parts, out, overwrite=overwrite)


# =================================================================================================
# Writing the official layout (tests, examples)
# =================================================================================================
def _official_llm_config(llm: LLMConfig) -> dict[str, Any]:
    """An HF Llama ``config.json`` as transformers 4.30.2 wrote it for the release (§5.1)."""
    return {
        "_name_or_path": "seedx_llama13b_vitg_448_anyres/checkpoint-merged/llm",
        "architectures": ["LlamaForCausalLM"],
        "bos_token_id": llm.bos_token_id,
        "eos_token_id": llm.eos_token_id,
        "hidden_act": "silu",
        "hidden_size": llm.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": llm.intermediate_size,
        "max_position_embeddings": 2048,
        "model_type": "llama",
        "num_attention_heads": llm.num_heads,
        "num_hidden_layers": llm.num_layers,
        "pad_token_id": llm.pad_token_id,
        "pretraining_tp": 2,
        "rms_norm_eps": llm.rms_norm_eps,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.30.2",
        "use_cache": True,
        "vocab_size": llm.vocab_size,
    }


def _pickle_tensors(state: Mapping[str, torch.Tensor]) -> StateDict:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _write_llm_folder(llm_module: nn.Module, llm: LLMConfig, folder: Path) -> None:
    """HF folder with two pickle shards, an index, and 4.30-style per-layer ``rotary_emb.inv_freq``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(_official_llm_config(llm), indent=2) + "\n")
    generation = {
        "bos_token_id": llm.bos_token_id,
        "eos_token_id": llm.eos_token_id,
        "pad_token_id": llm.pad_token_id,
        "transformers_version": "4.30.2",
    }
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    head_dim = llm.hidden_size // llm.num_heads
    inv_freq = 1.0 / (llm.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    state = _pickle_tensors(llm_module.state_dict())
    for layer in range(llm.num_layers):
        state[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    total = sum(t.numel() * t.element_size() for t in state.values())
    shards: list[StateDict] = [{}, {}]
    running = 0
    for key, tensor in state.items():  # first half of the bytes -> shard 1, the rest -> shard 2
        shards[0 if running < total / 2 else 1][key] = tensor
        running += tensor.numel() * tensor.element_size()
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        name = f"pytorch_model-{number:05d}-of-{len(shards):05d}.bin"
        torch.save(shard, folder / name)
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _stock_unet(parts: SeedXComponents) -> nn.Module:
    """The 4-channel UNet to store as the SDXL base: stage 1's, else stage 2's with conv_in cut to 4 inputs."""
    if 1 in parts.detokenizers:
        return parts.detokenizers[1].unet
    from diffusers import UNet2DConditionModel

    edit_unet = parts.detokenizers[2].unet
    unet_config = dict(parts.config.edit_detokenizer.unet)
    channels = parts.config.edit_detokenizer.latent_channels
    unet = UNet2DConditionModel(**{**unet_config, "in_channels": channels})
    state = _pickle_tensors(edit_unet.state_dict())
    state["conv_in.weight"] = state["conv_in.weight"][:, :channels].contiguous()  # (out, in, kh, kw)
    unet.load_state_dict(state, strict=True)
    return unet


def write_official_layout(parts: SeedXComponents, root: str | Path) -> OfficialLayout:
    """Write ``parts`` in the official release layout, key names and pickle formats (§13).

    Meant for tests and examples: it exercises the real-weight loading path on a tiny checkpoint.
    The release stores one SDXL VAE for both stages, so the stages' VAEs must be equal.
    """
    from diffusers import EulerDiscreteScheduler

    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    parts.tokenizer.save(root / TOKENIZER_FOLDER)
    vit_file = root / DEFAULT_VIT
    vit_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_pickle_tensors(parts.vision.state_dict()), vit_file)

    for variant, lvlm in parts.lvlms.items():
        folder = root / VARIANT_FOLDERS[variant]
        _write_llm_folder(lvlm.llm, parts.config.llm, folder / "llm")
        agent = {k: v for k, v in lvlm.state_dict().items() if not k.startswith("llm.")}
        (folder / "agent").mkdir(parents=True, exist_ok=True)
        torch.save(_pickle_tensors(agent), folder / "agent" / "pytorch_model.bin")

    for stage, detokenizer in parts.detokenizers.items():
        state = _prefixed(detokenizer.resampler, "resampler.")
        unet_state = _prefixed(detokenizer.unet, "unet.")
        if stage == 1:
            unet_state = {k: v for k, v in unet_state.items() if _OVERLAY_RE.search(k)}
        target = root / DETOKENIZER_FOLDER / STAGE_FOLDERS[stage] / "pytorch_model.bin"
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(_pickle_tensors({**state, **unet_state}), target)

    if parts.detokenizers:
        sdxl = root / DEFAULT_SDXL
        _stock_unet(parts).save_pretrained(sdxl / "unet", safe_serialization=True)
        vaes = [d.vae for _, d in sorted(parts.detokenizers.items()) if d.vae is not None]
        if vaes:
            reference = vaes[0].state_dict()
            for other in vaes[1:]:
                if any(not torch.equal(reference[k], v) for k, v in other.state_dict().items()):
                    raise CheckpointError(
                        "the official layout stores one SDXL VAE for both de-tokenizer stages, but the two stages "
                        "have different VAE weights; copy one VAE's state dict into the other first"
                    )
            vaes[0].save_pretrained(sdxl / "vae", safe_serialization=True)
        EulerDiscreteScheduler.from_config(parts.config.detokenizer.scheduler).save_config(sdxl / "scheduler")
    logger.info("wrote the official layout to %s", root)
    return OfficialLayout.discover(root)


# =================================================================================================
# Placement and quantisation
# =================================================================================================
PLACEMENT_KEYS: tuple[str, ...] = ("vision", "llm", "detokenizer")


def _cast_floating(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast floating parameters and persistent buffers; non-persistent buffers (RoPE frequencies) stay fp32."""
    for submodule in module.modules():
        for param in submodule._parameters.values():
            if param is not None and param.is_floating_point() and param.dtype != dtype:
                with torch.no_grad():
                    param.data = param.data.to(dtype)
        for name, buffer in submodule._buffers.items():
            if buffer is None or name in submodule._non_persistent_buffers_set:
                continue
            if buffer.is_floating_point() and buffer.dtype != dtype:
                submodule._buffers[name] = buffer.to(dtype)


def _groups(parts: SeedXComponents) -> Iterator[tuple[str, nn.Module]]:
    yield "vision", parts.vision
    for lvlm in parts.lvlms.values():
        yield "llm", lvlm
    for detokenizer in parts.detokenizers.values():
        yield "detokenizer", detokenizer


def place(
    parts: SeedXComponents,
    *,
    device_map: Mapping[str, str | torch.device] | None = None,
    dtype: torch.dtype | None = None,
) -> SeedXComponents:
    """Move each component group (``vision``, ``llm``, ``detokenizer``) to its device and cast it.

    Groups absent from ``device_map`` stay where they are. The VAE stays float32 when its config sets
    ``force_upcast`` (SDXL's VAE overflows in fp16); a quantised LLM keeps its quantised layers.
    """
    device_map = dict(device_map or {})
    unknown = sorted(set(device_map) - set(PLACEMENT_KEYS))
    if unknown:
        raise ConfigError(f"device_map has unknown keys {unknown}; use {list(PLACEMENT_KEYS)}")
    if dtype is not None and not dtype.is_floating_point:
        raise ConfigError(f"dtype must be a floating dtype such as torch.float16, got {dtype}")
    for group, module in _groups(parts):
        device = device_map.get(group)
        quantised = group == "llm" and getattr(module, "quantized_bits", None) is not None
        targets: list[nn.Module] = [module]
        if quantised:  # bitsandbytes layers must not be cast or moved off their GPU
            targets = [child for name, child in module.named_children() if name != "llm"]
            if device is not None and torch.device(device) != module.llm.device:
                raise ConfigError(f"the LLM is quantised on {module.llm.device}; it cannot move to {device}")
        for target in targets:
            if device is not None:
                nn.Module.to(target, device=device)
            if dtype is not None:
                _cast_floating(target, dtype)
        if quantised:
            if device is not None:
                module.patch_pos_embed.data = module.patch_pos_embed.data.to(device)
            if dtype is not None:
                module.patch_pos_embed.data = module.patch_pos_embed.data.to(dtype)
        vae = getattr(module, "vae", None) if group == "detokenizer" else None
        if vae is not None and dtype is not None and _vae_keeps_fp32(dict(vae.config)):
            _cast_floating(vae, torch.float32)
    return parts


def quantize_llm(lvlm: nn.Module, bits: int) -> nn.Module:
    """Quantise the LLM's decoder-layer Linear weights to 8 bit (LLM.int8) or 4 bit (NF4) with bitsandbytes.

    Embeddings, ``lm_head``, norms, resamplers and the patch table stay unquantised: the hidden states
    feed the image regression head (§14.2). Needs ``pip install bitsandbytes`` and a CUDA GPU.
    """
    if bits not in (4, 8):
        raise ConfigError(f"bits must be 8 or 4, got {bits!r}")
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise DependencyMissingError(
            f"{bits}-bit quantisation needs bitsandbytes: pip install bitsandbytes (it also needs a CUDA GPU)"
        ) from exc
    if not torch.cuda.is_available():
        raise DependencyMissingError("bitsandbytes quantisation needs a CUDA GPU; none is visible to torch")
    if getattr(lvlm, "quantized_bits", None) is not None:
        raise ConfigError(f"the LLM is already quantised to {lvlm.quantized_bits} bits")
    current = lvlm.llm.device
    device = current if current.type == "cuda" else torch.device("cuda")
    compute_dtype = lvlm.dtype if lvlm.dtype in (torch.float16, torch.bfloat16) else torch.float16
    targets = [
        (parent, name, child)
        for parent in lvlm.llm.model.layers.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]
    for parent, name, linear in targets:
        weight = linear.weight.data.to(device="cpu", dtype=compute_dtype)
        has_bias = linear.bias is not None
        if bits == 8:
            layer = bnb.nn.Linear8bitLt(
                linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False, threshold=6.0
            )
            layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(
                linear.in_features, linear.out_features, bias=has_bias, compute_dtype=compute_dtype, quant_type="nf4"
            )
            layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
        if has_bias:
            layer.bias = nn.Parameter(linear.bias.data.to(device="cpu", dtype=compute_dtype), requires_grad=False)
        setattr(parent, name, layer.to(device))  # bitsandbytes quantises on the move to the GPU
    # Embeddings, norms, lm_head, resamplers and the patch table keep their dtype and join the GPU
    # (the quantised layers are already there; bitsandbytes parameters accept the no-op move).
    nn.Module.to(lvlm, device=device)
    lvlm.quantized_bits = bits
    logger.info("quantised %d LLM linear layers to %d bits on %s", len(targets), bits, device)
    return lvlm


def _parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(parts: SeedXComponents) -> dict[str, dict[str, Any]]:
    """Per component: number of state-dict keys, parameters and the dtypes present (for logs and examples)."""
    summary = {}
    for name, module in parts.modules():
        state = module.state_dict()
        summary[name] = {
            "keys": len(state),
            "parameters": _parameter_count(module),
            "dtypes": sorted({str(t.dtype).replace("torch.", "") for t in state.values()}),
            "megabytes": round(sum(t.numel() * t.element_size() for t in state.values()) / 2**20, 2),
        }
    return summary
