"""Pydantic configs for every SEED-X component and the named presets.

Presets are Python (``SeedXConfig.from_preset("seed-x-i")``); a loaded model stores its config as
``config.json`` beside the weights. The official numbers come from the reference (§2, §4, §5, §9,
§10); ``tiny-random`` keeps every code path with sizes that run in milliseconds on a CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from seedx_agent.errors import ConfigError, UnknownPresetError

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "PRESETS",
    "VARIANTS",
    "AnyResConfig",
    "DetokenizerConfig",
    "LLMConfig",
    "LVLMConfig",
    "PerceiverConfig",
    "QwenResamplerConfig",
    "SeedXConfig",
    "VisionConfig",
    "resolve_config",
]

Variant = Literal["seed-x", "seed-x-i", "seed-x-edit"]
VARIANTS: tuple[str, ...] = ("seed-x", "seed-x-i", "seed-x-edit")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VisionConfig(_Config):
    """Qwen-VL ViT-G/14 with its attention pool (reference §2)."""

    image_size: int = 448
    patch_size: int = 14
    width: int = 1664
    layers: int = 48
    heads: int = 16
    mlp_width: int = 8192
    output_dim: int = 4096
    pos_embed_grid: int = 16  # learned table is grid x grid, interpolated to the patch grid
    pool_grid: int = 16  # attention-pool queries = pool_grid ** 2
    pool_heads: int = 32
    ln_eps: float = 1e-6
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    @property
    def patch_grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_output_tokens(self) -> int:
        return self.pool_grid**2

    @model_validator(mode="after")
    def _check(self) -> VisionConfig:
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ConfigError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.output_dim % self.pool_heads:
            raise ConfigError(f"output_dim {self.output_dim} is not divisible by pool_heads {self.pool_heads}")
        return self


class QwenResamplerConfig(_Config):
    """Qwen-VL single cross-attention pool (reference §4.1)."""

    grid: int = 8  # queries = grid ** 2
    embed_dim: int = 5120
    num_heads: int = 32
    kv_dim: int = 4096
    ln_eps: float = 1e-5

    @property
    def num_queries(self) -> int:
        return self.grid**2


class LLMConfig(_Config):
    """LLaMA geometry; mapped one-to-one onto ``transformers.LlamaConfig``."""

    vocab_size: int = 32330
    hidden_size: int = 5120
    num_layers: int = 40
    num_heads: int = 40
    num_kv_heads: int = 40
    intermediate_size: int = 13824
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0

    def to_hf(self) -> Any:
        """Build the ``transformers.LlamaConfig`` (``pretraining_tp`` 1: same maths, faster)."""
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            intermediate_size=self.intermediate_size,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            max_position_embeddings=self.max_position_embeddings,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            tie_word_embeddings=False,
            pretraining_tp=1,
        )


class LVLMConfig(_Config):
    """Resamplers, patch-position table and loss weights around the LLM (reference §4, §6.3)."""

    num_image_tokens: int = 64
    input_resampler: QwenResamplerConfig = QwenResamplerConfig(grid=8, embed_dim=5120, num_heads=32, kv_dim=4096)
    output_resampler: QwenResamplerConfig = QwenResamplerConfig(grid=8, embed_dim=4096, num_heads=32, kv_dim=5120)
    use_patch_pos: bool = True
    lm_loss_scale: float = 1.0
    rec_loss_scale: float = 6.0

    @model_validator(mode="after")
    def _check(self) -> LVLMConfig:
        for name in ("input_resampler", "output_resampler"):
            q = getattr(self, name).num_queries
            if q != self.num_image_tokens:
                raise ConfigError(f"{name} has {q} queries but num_image_tokens is {self.num_image_tokens}")
        if not 1 <= self.num_image_tokens <= 100:
            raise ConfigError("num_image_tokens must be in [1, 100]: the vocabulary has 100 <img_xxxxx> slots")
        for name in ("lm_loss_scale", "rec_loss_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
        return self


class PerceiverConfig(_Config):
    """ResamplerXLV2: the de-tokenizer's perceiver with SDXL-shaped outputs (reference §9.1)."""

    dim: int = 1024
    depth: int = 4
    heads: int = 16
    dim_head: int = 64
    num_latents: int = 64
    input_dim: int = 4096
    ff_mult: int = 4
    prompt_dims: tuple[int, int] = (768, 1280)  # unet_proj_1, unet_proj_2 -> concatenated
    pooled_dim: int = 1280
    pool_heads: int = 16
    normalize: bool = False  # SEED-Story L2-normalises its input along the token axis

    @property
    def cross_attention_dim(self) -> int:
        return sum(self.prompt_dims)


SDXL_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}

SDXL_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

SDXL_EULER: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}


class DetokenizerConfig(_Config):
    """SDXL-style de-tokenizer; stage 2 adds the 4 condition-latent channels (reference §9, §10).

    ``vae`` None means pixel-space diffusion (the miniature on CPU); real models use the SDXL VAE.
    """

    stage: Literal[1, 2] = 1
    perceiver: PerceiverConfig = PerceiverConfig()
    unet: dict[str, Any] = Field(default_factory=lambda: dict(SDXL_UNET))
    vae: dict[str, Any] | None = Field(default_factory=lambda: dict(SDXL_VAE))
    scheduler: dict[str, Any] = Field(default_factory=lambda: dict(SDXL_EULER))
    image_size: int = 1024
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5
    condition_latents_scaled: bool = False  # official stage 2 uses unscaled posterior modes (issue #21)

    @property
    def latent_channels(self) -> int:
        return int(self.vae["latent_channels"]) if self.vae is not None else 3

    @property
    def latent_size(self) -> int:
        if self.vae is None:
            return self.image_size
        return self.image_size // 2 ** (len(self.vae["block_out_channels"]) - 1)

    @model_validator(mode="after")
    def _check(self) -> DetokenizerConfig:
        if self.unet.get("out_channels") != self.latent_channels:
            raise ConfigError(f"unet out_channels must be {self.latent_channels}, got {self.unet.get('out_channels')}")
        want_in = self.latent_channels * (2 if self.stage == 2 else 1)
        if self.unet.get("in_channels") != want_in:
            raise ConfigError(
                f"stage-{self.stage} UNet needs in_channels={want_in}, got {self.unet.get('in_channels')}"
            )
        if self.unet.get("cross_attention_dim") != self.perceiver.cross_attention_dim:
            raise ConfigError("unet cross_attention_dim must equal the perceiver's prompt_dims sum")
        time_dim = int(self.unet.get("addition_time_embed_dim", 0))
        if self.unet.get("projection_class_embeddings_input_dim") != self.perceiver.pooled_dim + 6 * time_dim:
            raise ConfigError(
                "unet projection_class_embeddings_input_dim must be pooled_dim + 6 * addition_time_embed_dim"
            )
        return self


class AnyResConfig(_Config):
    """Grid candidates for the any-resolution split (reference §3)."""

    grids: tuple[str, ...] = ("1x1", "1x2", "1x3", "2x1", "3x1", "1x4", "4x1", "2x2")
    edit_grids: tuple[str, ...] = ("1x1",)

    @model_validator(mode="after")
    def _check(self) -> AnyResConfig:
        for grid in (*self.grids, *self.edit_grids):
            parts = grid.split("x")
            if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
                raise ConfigError(f"grid {grid!r} is not of the form 'AxB' with positive integers")
        if not self.grids or not self.edit_grids:
            raise ConfigError("grids and edit_grids must not be empty")
        return self


class SeedXConfig(_Config):
    """A whole SEED-X family: shared ViT, one LLM geometry, both de-tokenizer stages.

    ``variant`` says which prompt style and de-tokenizer the primary LLM uses; the family shares
    geometry so one config describes `seed-x`, `seed-x-i` and `seed-x-edit` alike.
    """

    name: str = "seed-x-i"
    variant: Variant = "seed-x-i"
    vision: VisionConfig = VisionConfig()
    llm: LLMConfig = LLMConfig()
    lvlm: LVLMConfig = LVLMConfig()
    detokenizer: DetokenizerConfig = DetokenizerConfig(stage=1)
    edit_detokenizer: DetokenizerConfig = DetokenizerConfig(stage=2, unet={**SDXL_UNET, "in_channels": 8})
    anyres: AnyResConfig = AnyResConfig()
    max_new_tokens: int = 512
    max_new_tokens_image: int = 120

    @model_validator(mode="after")
    def _check(self) -> SeedXConfig:
        lv, v, llm = self.lvlm, self.vision, self.llm
        if lv.input_resampler.kv_dim != v.output_dim or lv.input_resampler.embed_dim != llm.hidden_size:
            raise ConfigError("input_resampler must map vision.output_dim -> llm.hidden_size")
        if lv.output_resampler.kv_dim != llm.hidden_size or lv.output_resampler.embed_dim != v.output_dim:
            raise ConfigError("output_resampler must map llm.hidden_size -> vision.output_dim")
        if v.num_output_tokens != 4 * lv.num_image_tokens:
            raise ConfigError(
                f"vision pool has {v.num_output_tokens} tokens; 4-to-1 pooling needs 4 x num_image_tokens "
                f"= {4 * lv.num_image_tokens}"
            )
        for det in (self.detokenizer, self.edit_detokenizer):
            if det.perceiver.input_dim != v.output_dim:
                raise ConfigError("de-tokenizer perceiver input_dim must equal vision.output_dim")
        if self.detokenizer.stage != 1 or self.edit_detokenizer.stage != 2:
            raise ConfigError("detokenizer must be stage 1 and edit_detokenizer stage 2")
        return self

    # -- presets and serialisation -------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> SeedXConfig:
        """Look a preset up by name; ``overrides`` replace top-level fields (e.g. ``variant``)."""
        if name not in PRESETS:
            raise UnknownPresetError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        config = PRESETS[name]()
        if not overrides:
            return config
        try:
            return cls.model_validate({**config.model_dump(), **overrides})
        except ValidationError as exc:
            raise ConfigError(f"invalid override for preset {name!r}: {exc}") from exc

    def with_rec_loss_scale(self, scale: float) -> SeedXConfig:
        """This config with the LLM's regression-loss weight replaced, validated like a loaded config."""
        data = self.model_dump()
        data["lvlm"]["rec_loss_scale"] = scale
        return SeedXConfig.model_validate(data)

    def differences(self, other: SeedXConfig, *, ignore: tuple[str, ...] = ("name", "variant")) -> list[str]:
        """Dotted paths of the fields where ``other`` differs; by default ``name`` and ``variant`` (labels that the
        three variants' shared geometry does not depend on) are ignored."""
        return _differences(self.model_dump(mode="json"), other.model_dump(mode="json"), "", ignore)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> SeedXConfig:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {str(path)!r} does not exist") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid JSON: {exc}") from exc
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"config file {str(path)!r} is not a valid SeedXConfig: {exc}") from exc


def _differences(a: Any, b: Any, prefix: str, ignore: tuple[str, ...]) -> list[str]:
    """Leaf paths where two ``model_dump`` trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        found: list[str] = []
        for key in sorted(set(a) | set(b)):
            path = f"{prefix}{key}"
            if path not in ignore:
                found += _differences(a.get(key), b.get(key), path + ".", ignore)
        return found
    return [] if a == b else [prefix.rstrip(".")]


def resolve_config(
    config: SeedXConfig | str | None = None, *, preset: str | None = None, default: str = "seed-x-i"
) -> SeedXConfig:
    """The geometry a loader uses: ``config`` (a SeedXConfig or a preset name), else ``preset``, else ``default``.

    Giving both ``config`` and ``preset`` is allowed only when they agree (``name``/``variant`` aside); else a
    ``ConfigError`` names the fields that differ, so a custom geometry is never silently replaced by a preset.
    """
    if config is None:
        return SeedXConfig.from_preset(preset if preset is not None else default)
    if isinstance(config, str):
        resolved = SeedXConfig.from_preset(config)
    elif isinstance(config, SeedXConfig):
        resolved = config
    else:
        raise ConfigError(f"config must be a SeedXConfig or a preset name, got {type(config).__name__}")
    if preset is not None:
        fields = SeedXConfig.from_preset(preset).differences(resolved)
        if fields:
            shown = ", ".join(fields[:6]) + (f" and {len(fields) - 6} more" if len(fields) > 6 else "")
            raise ConfigError(
                f"preset={preset!r} and config= disagree on {shown}; pass only config= for a non-standard geometry"
            )
    return resolved


def _official(variant: str) -> SeedXConfig:
    return SeedXConfig(name=variant, variant=variant)  # type: ignore[arg-type]


TINY_VOCAB_BASE = 512  # size of the bundled test SentencePiece model (seedx_agent/assets/tiny_tokenizer)


def _tiny_detokenizer(stage: int) -> DetokenizerConfig:
    perceiver = PerceiverConfig(
        dim=32,
        depth=2,
        heads=2,
        dim_head=16,
        num_latents=8,
        input_dim=48,
        ff_mult=2,
        prompt_dims=(16, 24),
        pooled_dim=24,
        pool_heads=2,
    )
    unet = {
        **SDXL_UNET,
        "attention_head_dim": [2, 4],
        "block_out_channels": [32, 64],
        "cross_attention_dim": 40,
        "addition_embed_type_num_heads": 4,
        "addition_time_embed_dim": 8,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "in_channels": 4 * (2 if stage == 2 else 1),
        "layers_per_block": 1,
        "projection_class_embeddings_input_dim": 24 + 6 * 8,
        "sample_size": 16,
        "transformer_layers_per_block": [1, 1],
    }
    vae = {
        **SDXL_VAE,
        "block_out_channels": [32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
        "layers_per_block": 1,
        "sample_size": 32,
    }
    return DetokenizerConfig(
        stage=stage,
        perceiver=perceiver,
        unet=unet,
        vae=vae,
        image_size=32,  # type: ignore[arg-type]
        num_inference_steps=4,
    )


def _tiny_random() -> SeedXConfig:
    return SeedXConfig(
        name="tiny-random",
        variant="seed-x-i",
        vision=VisionConfig(
            image_size=56,
            patch_size=14,
            width=32,
            layers=2,
            heads=4,
            mlp_width=64,
            output_dim=48,
            pos_embed_grid=2,
            pool_grid=4,
            pool_heads=4,
        ),
        llm=LLMConfig(
            vocab_size=TINY_VOCAB_BASE + 330,
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            num_kv_heads=4,
            intermediate_size=128,
            max_position_embeddings=2048,
        ),
        lvlm=LVLMConfig(
            num_image_tokens=4,
            input_resampler=QwenResamplerConfig(grid=2, embed_dim=64, num_heads=4, kv_dim=48),
            output_resampler=QwenResamplerConfig(grid=2, embed_dim=48, num_heads=4, kv_dim=64),
        ),
        detokenizer=_tiny_detokenizer(1),
        edit_detokenizer=_tiny_detokenizer(2),
        max_new_tokens=24,
        max_new_tokens_image=24,
    )


# Pixel-space noise schedule of the miniature (a documented deviation from SDXL's, which real models keep).
# SDXL's scaled-linear betas were tuned for VAE latents: on 32x32 pixels in [-1, 1] its noisiest sampled
# step (t=961 with "leading" spacing) still keeps 8.5% of the image, so flat colours and positions stay
# readable from x_t and the UNet learns to copy them instead of reading its conditioning; sampling from pure
# noise then draws arbitrary colours and places. DDPM's linear betas keep 0.6% at t=999 and "trailing"
# spacing starts sampling there. At that noise level epsilon-prediction must be accurate to ~1e-3 (its error
# is multiplied by sigma=157 in the x0 estimate; our eps-trained run left coloured noise), so the miniature
# predicts v, which at t=999 is about -x0: the network has to draw the image from its conditioning.
MINI_PIXEL_SCHEDULE: dict[str, Any] = {
    **SDXL_EULER,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "timestep_spacing": "trailing",
    "steps_offset": 0,
    "prediction_type": "v_prediction",
}


def _mini_detokenizer(stage: int) -> DetokenizerConfig:
    """Pixel-space (no VAE) 32x32 de-tokenizer with cross-attention at 16x16 and 8x8 (FIELD-NOTES)."""
    perceiver = PerceiverConfig(
        dim=128,
        depth=2,
        heads=4,
        dim_head=32,
        num_latents=16,
        input_dim=64,
        ff_mult=2,
        prompt_dims=(64, 64),
        pooled_dim=128,
        pool_heads=4,
    )
    unet = {
        **SDXL_UNET,
        "addition_embed_type_num_heads": 4,
        "addition_time_embed_dim": 32,
        "attention_head_dim": [2, 4, 8],
        "block_out_channels": [32, 64, 128],
        "cross_attention_dim": 128,
        "in_channels": 3 * (2 if stage == 2 else 1),
        "layers_per_block": 1,
        "norm_num_groups": 16,
        "out_channels": 3,
        "projection_class_embeddings_input_dim": 128 + 6 * 32,
        "sample_size": 32,
        "transformer_layers_per_block": [1, 1, 1],
    }
    return DetokenizerConfig(
        stage=stage,
        perceiver=perceiver,
        unet=unet,
        vae=None,
        scheduler=dict(MINI_PIXEL_SCHEDULE),
        image_size=32,
        num_inference_steps=25,
        guidance_scale=3.0,
        image_guidance_scale=1.5,
    )


def _mini() -> SeedXConfig:
    """The miniature SEED-X trained on the procedural world (``seedx_agent.miniature``), CPU-sized.

    Same architecture as SEED-X at miniature size: 64x64 ViT crops (patch 8, 64 pooled tokens), 16 image
    tokens, a 4-layer LLaMA, pixel-space 32x32 de-tokenizers. Images are square, so any-res uses 1x1 only.
    """
    return SeedXConfig(
        name="mini",
        variant="seed-x-i",
        vision=VisionConfig(
            image_size=64,
            patch_size=8,
            width=128,
            layers=4,
            heads=4,
            mlp_width=512,
            output_dim=64,
            pos_embed_grid=8,
            pool_grid=8,
            pool_heads=4,
        ),
        llm=LLMConfig(
            vocab_size=TINY_VOCAB_BASE + 330,
            hidden_size=256,
            num_layers=4,
            num_heads=4,
            num_kv_heads=4,
            intermediate_size=688,
            max_position_embeddings=1024,  # agent dialogs (compact tool protocol) run to ~720 tokens
        ),
        lvlm=LVLMConfig(
            num_image_tokens=16,
            input_resampler=QwenResamplerConfig(grid=4, embed_dim=256, num_heads=4, kv_dim=64),
            output_resampler=QwenResamplerConfig(grid=4, embed_dim=64, num_heads=4, kv_dim=256),
            # SEED-X weighs the regression 6.0x; in the 4-layer miniature that starves the LM loss: at
            # 800 pre-training steps 1.0 beat 6.0 on held-out VQA, grounding *and* regression MSE
            # (README "miniature"). Real presets keep 6.0.
            rec_loss_scale=1.0,
        ),
        detokenizer=_mini_detokenizer(1),
        edit_detokenizer=_mini_detokenizer(2),
        anyres=AnyResConfig(grids=("1x1",), edit_grids=("1x1",)),
        max_new_tokens=48,
        max_new_tokens_image=24,
    )


PRESETS: dict[str, Any] = {
    "seed-x": lambda: _official("seed-x"),
    "seed-x-i": lambda: _official("seed-x-i"),
    "seed-x-edit": lambda: _official("seed-x-edit"),
    "tiny-random": _tiny_random,
    "mini": _mini,
}
