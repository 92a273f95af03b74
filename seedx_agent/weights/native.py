"""Our own layout: one safetensors file per component plus ``manifest.json`` (format version, config, sha256
of every file), written atomically and verified on load."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seedx_agent.config import SeedXConfig
from seedx_agent.errors import (
    CheckpointError,
    CorruptCheckpointError,
)
from seedx_agent.pipeline.components import SeedXComponents, stage_for_variant
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.weights.io import (
    _FILE_HASHES,
    _FILE_HASHES_LOCK,
    StateDict,
    _assign,
    _build_empty,
    _DtypeRule,
    _file_key,
    _finish,
    _meta_tensors,
    _read_json,
    _sha256,
    _strip,
    _vae_keeps_fp32,
    atomic_folder,
    check_finite_weights,
    check_state_dict,
    file_sha256,
    read_state_dict,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_FORMAT_NAME = "seedx-agent"

# =================================================================================================
# Our layout: safetensors + manifest
# =================================================================================================


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
    with atomic_folder(folder) as staging:
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
