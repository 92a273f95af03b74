"""The official SEED-X release layout (reference §13.1): where each file lives, config checks, and loading it
into our modules (pickle files only with ``allow_pickle=True``, then ``torch.load(weights_only=True)``)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seedx_agent.config import VARIANTS, LLMConfig, SeedXConfig, resolve_config
from seedx_agent.errors import (
    CheckpointError,
    ConfigError,
)
from seedx_agent.pipeline.components import SeedXComponents
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.weights.io import (
    _FOLDER_WEIGHTS,
    StateDict,
    _assign,
    _build_empty,
    _check_variants_stages,
    _detokenizer_config,
    _finish,
    _prefixed,
    _read_json,
    _strip,
    _vae_keeps_fp32,
    check_finite_weights,
    check_state_dict,
    load_strict,
    read_state_dict,
)
from seedx_agent.weights.native import save_components

logger = logging.getLogger(__name__)

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
