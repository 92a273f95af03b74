"""The one way to get SEED-X components: bundled ``mini`` weights, a checkpoint folder (ours or the official
release), or random weights for a preset name / ``SeedXConfig`` geometry. ``SeedX.from_pretrained`` calls this."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from seedx_agent.config import PRESETS, SeedXConfig, resolve_config
from seedx_agent.errors import CheckpointError, ConfigError
from seedx_agent.pipeline.components import SeedXComponents, build_components
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.weights.native import load_components
from seedx_agent.weights.official import OfficialLayout, load_official
from seedx_agent.weights.placement import PLACEMENT_KEYS, place, quantize_llm

__all__ = ["MINI_WEIGHTS", "bundled_mini_path", "load_parts", "resolve_device_map"]

MINI_WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "mini"


def bundled_mini_path() -> Path:
    """Folder of the miniature's bundled weights (``SeedX.from_pretrained("mini")``)."""
    if not (MINI_WEIGHTS / "manifest.json").is_file():
        raise CheckpointError(
            f"the miniature's weights are not bundled in this install ({MINI_WEIGHTS} is missing); train them "
            "with `seedx-agent train mini` and load the output folder, or reinstall the package"
        )
    return MINI_WEIGHTS


def resolve_device_map(device: str | None, device_map: dict[str, str] | None) -> dict[str, str]:
    """One device per placement group (vision, llm, detokenizer); ``device`` fills the groups not named."""
    if device_map is not None:
        unknown = set(device_map) - set(PLACEMENT_KEYS)
        if unknown:
            raise ConfigError(f"device_map keys must be 'vision', 'llm', 'detokenizer'; got {sorted(unknown)}")
        base = device or "cpu"
        return {k: device_map.get(k, base) for k in PLACEMENT_KEYS}
    return dict.fromkeys(PLACEMENT_KEYS, device or "cpu")


def default_dtype(device_map: dict[str, str]) -> torch.dtype:
    """fp32 on CPU (as diffusers/transformers do), bf16 as soon as a component sits on CUDA."""
    return torch.bfloat16 if any(torch.device(d).type == "cuda" for d in device_map.values()) else torch.float32


def _tokenizer_for(config: SeedXConfig) -> SeedXTokenizer:
    if config.llm.vocab_size == SeedXTokenizer.tiny().vocab_size:
        return SeedXTokenizer.tiny()
    raise CheckpointError(
        f"preset {config.name!r} needs the LLaMA-2 tokenizer ({config.llm.vocab_size} tokens), which is not bundled; "
        "load a checkpoint folder with SeedX.from_pretrained(path) or pass tokenizer="
    )


def _is_random_spec(spec: str | Path | SeedXConfig) -> bool:
    """A ``SeedXConfig`` or a preset name (other than ``mini``, which names the bundled trained weights)."""
    return isinstance(spec, SeedXConfig) or (isinstance(spec, str) and spec != "mini" and spec in PRESETS)


def load_parts(
    spec: str | Path | SeedXConfig,
    *,
    config: SeedXConfig | str | None = None,
    variants: Sequence[str] | None = None,
    stages: Sequence[int] | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    device_map: dict[str, str] | None = None,
    seed: int = 0,
    tokenizer: SeedXTokenizer | None = None,
    allow_pickle: bool = False,
    vit_path: str | Path | None = None,
    sdxl_path: str | Path | None = None,
    quantize_bits: Literal[4, 8] | None = None,
    verify: bool = True,
    check_finite: bool = True,
) -> SeedXComponents:
    """Components for ``spec`` (see ``SeedX.from_pretrained`` for every argument), placed and ready."""
    dmap = resolve_device_map(device, device_map)
    if _is_random_spec(spec):
        if config is not None:
            raise ConfigError("a preset or SeedXConfig already gives the geometry; drop config=")
        geometry = resolve_config(spec)  # type: ignore[arg-type]
        chosen = tuple(variants) if variants is not None else (geometry.variant,)
        parts = build_components(
            geometry, tokenizer=tokenizer or _tokenizer_for(geometry), variants=chosen, stages=stages, seed=seed
        )
    else:
        root = bundled_mini_path() if spec == "mini" else Path(spec)
        if not root.exists():
            raise CheckpointError(
                f"checkpoint folder {str(root)!r} does not exist; pass an existing folder or 'mini' (the bundled "
                "trained miniature); for random weights pass a preset name, one of "
                f"{', '.join(sorted(set(PRESETS) - {'mini'}))}, or a SeedXConfig (e.g. SeedXConfig.from_preset('mini') "
                "for the miniature's geometry)"
            )
        if (root / "manifest.json").is_file():  # our layout: its config.json is authoritative
            if config is not None:
                stored = SeedXConfig.load(root / "config.json")
                fields = stored.differences(resolve_config(config))
                if fields:
                    raise ConfigError(
                        f"the config given does not match {str(root / 'config.json')!r} (the geometry of these "
                        f"weights) on {', '.join(fields[:6])}; drop config= or pass the stored config"
                    )
            parts = load_components(root, variants=variants, stages=stages, verify=verify, check_finite=check_finite)
        else:  # the official release: no config of ours, so config= selects the geometry (default seed-x-i)
            layout = OfficialLayout.discover(root, vit_path=vit_path, sdxl_path=sdxl_path)
            geometry = resolve_config(config)
            chosen = tuple(variants) if variants is not None else (geometry.variant,)
            parts = load_official(
                layout, geometry, variants=chosen, stages=stages, allow_pickle=allow_pickle, check_finite=check_finite
            )
    place(parts, device_map=dmap, dtype=dtype or default_dtype(dmap))
    if quantize_bits is not None:
        for lvlm in parts.lvlms.values():
            quantize_llm(lvlm, bits=quantize_bits)
    return parts
