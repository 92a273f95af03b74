"""SEED-X training stages as recipes over the shared loop (reference §12.1).

Stages, in the paper's order (the miniature's own stages and its end-to-end run live in
``seedx_agent.miniature.recipe``, which builds on these):

1. ``detokenizer_stage1``: ViT features -> perceiver -> UNet denoising loss (image reconstruction).
2. ``detokenizer_stage2``: stage 1 with the doubled ``conv_in``; the source image is the condition.
3. ``lvlm_pretrain``: next-token loss + 6.0 x MSE of the output resampler onto 4-to-1 pooled ViT
   features (``SeedXLVLM.forward``), full LLM weights, pre-training prompt style.
4. ``lvlm_sft``: a LoRA (peft; the reference's targets and ``modules_to_save``) on the instruction
   format, merged into the LLM at the end.

Each stage checkpoints into its own folder and resumes there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from seedx_agent.config import SeedXConfig
from seedx_agent.errors import ConfigError
from seedx_agent.pipeline.detokenizer import Detokenizer, expand_conv_in
from seedx_agent.pipeline.lvlm import LVLMOutput, SeedXLVLM
from seedx_agent.pipeline.vision import QwenViT, pool_tokens_4to1
from seedx_agent.training.loop import LoopConfig, LoopResult, load_trainable_state, run_loop
from seedx_agent.training.samples import Batch, TrainingExample, collate

__all__ = [
    "ImageBatches",
    "LoraSettings",
    "apply_lora",
    "detokenizer_stage1",
    "detokenizer_stage2",
    "lvlm_loss",
    "lvlm_pretrain",
    "lvlm_sft",
    "merge_lora",
]


class ImageBatches(Protocol):
    """What the de-tokenizer stages draw batches from (e.g. ``seedx_agent.miniature.world_data.WorldData``):
    ``scenes`` batches carry ``vit_pixels`` and ``target_pixels``, ``edits`` batches ``condition_pixels`` too."""

    def scenes(self, step: int, n: int) -> Any: ...

    def edits(self, step: int, n: int) -> Any: ...


# ---------------------------------------------------------------------------------------------
# Shared steps
# ---------------------------------------------------------------------------------------------


def frozen(module: nn.Module) -> nn.Module:
    """Freeze ``module`` (no grads, eval mode) and return it."""
    module.requires_grad_(False)
    return module.eval()


@torch.no_grad()
def vit_features(vision: QwenViT, pixel_values: torch.Tensor) -> torch.Tensor:
    """Frozen-ViT features (n, vit_tokens, vit_dim) of normalised crops."""
    param = next(vision.parameters())
    return vision(pixel_values.to(device=param.device, dtype=param.dtype))


def lvlm_forward(lvlm: SeedXLVLM, vision: QwenViT, batch: Batch) -> LVLMOutput:
    """The §12.4 teacher-forced pass: keep crops with cmp or gen set, run the frozen ViT on them, feed the
    cmp crops as inputs (with patch positions) and regress onto the gen crops' pooled features."""
    batch = batch.to(lvlm.device)
    keep = batch.embeds_cmp_mask | batch.embeds_gen_mask
    image_embeds, targets = None, None
    if bool(keep.any()):
        features = vit_features(vision, batch.pixel_values[keep])
        cmp, gen = batch.embeds_cmp_mask[keep], batch.embeds_gen_mask[keep]
        if bool(cmp.any()):
            image_embeds = lvlm.embed_images(features[cmp], batch.patch_positions[keep][cmp])
        if bool(gen.any()):
            targets = features[gen]
    return lvlm(
        batch.input_ids,
        attention_mask=batch.attention_mask,
        labels=batch.labels,
        image_embeds=image_embeds,
        ids_cmp_mask=batch.ids_cmp_mask,
        ids_gen_mask=batch.ids_gen_mask,
        target_vit_features=targets,
    )


def lvlm_loss(lvlm: SeedXLVLM, vision: QwenViT, batch: Batch) -> dict[str, torch.Tensor]:
    """The training step's losses (``lvlm_forward``): the total to back-propagate, LM and regression parts."""
    out = lvlm_forward(lvlm, vision, batch)
    losses = {"loss": out.loss}
    if out.lm_loss is not None:
        losses["lm"] = out.lm_loss.detach()
    if out.rec_loss is not None:
        losses["rec"] = out.rec_loss.detach()
    return losses


# ---------------------------------------------------------------------------------------------
# De-tokenizer stages
# ---------------------------------------------------------------------------------------------


def _detok_step(
    detok: Detokenizer,
    vision: QwenViT,
    batch_fn: Callable[[int], object],
    *,
    uncond_prob: float,
    condition_drop_prob: float = 0.0,
    raw_token_every: int = 3,
) -> Callable[[int], dict[str, torch.Tensor]]:
    size = vision.config.image_size
    raw_negative = vit_features(vision, torch.zeros(1, 3, size, size))

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        batch = batch_fn(step)
        features = vit_features(vision, batch.vit_pixels)  # (B, vit_tokens, dim)
        negative = raw_negative
        # LLM outputs arrive 4-to-1 pooled ("vit_down"); reconstruction feeds the raw tokens (§8.1 D, §9.2).
        # The official training code is unreleased; training on both keeps both inference paths in distribution.
        if step % raw_token_every != raw_token_every - 1:
            features, negative = pool_tokens_4to1(features), pool_tokens_4to1(raw_negative)
        kwargs: dict[str, object] = {}
        if detok.stage == 2:
            kwargs = {"condition_images": batch.condition_pixels, "condition_drop_prob": condition_drop_prob}
        loss = detok.training_loss(
            batch.target_pixels, features, uncond_prob=uncond_prob, negative_features=negative, **kwargs
        )
        return {"loss": loss}

    return step_fn


def detokenizer_stage1(
    detok: Detokenizer,
    vision: QwenViT,
    data: ImageBatches,
    out_dir: str | Path,
    loop: LoopConfig,
    *,
    batch_size: int = 32,
    uncond_prob: float = 0.1,
    progress: bool = True,
) -> LoopResult:
    """Reconstruction: the UNet learns to draw an image from its (pooled) ViT features."""
    step_fn = _detok_step(detok, vision, lambda step: data.scenes(step, batch_size), uncond_prob=uncond_prob)
    return _train_detokenizer(1, detok, vision, step_fn, out_dir, loop, progress)


def _train_detokenizer(
    stage: int,
    detok: Detokenizer,
    vision: QwenViT,
    step_fn: Callable[[int], dict[str, torch.Tensor]],
    out_dir: str | Path,
    loop: LoopConfig,
    progress: bool,
) -> LoopResult:
    """Shared by both stages: frozen ViT (and VAE), everything else of the de-tokenizer trains."""
    if detok.stage != stage:
        raise ConfigError(f"detokenizer_stage{stage} trains a stage-{stage} de-tokenizer, got stage {detok.stage}")
    frozen(vision)
    detok.requires_grad_(True)
    if detok.vae is not None:
        frozen(detok.vae)
    params = [p for p in detok.parameters() if p.requires_grad]
    name = f"detokenizer-{stage}"
    return run_loop(name, out_dir, {"detokenizer": detok}, params, step_fn, loop, progress=progress)


def stage2_from_stage1(stage1: Detokenizer, config: SeedXConfig) -> Detokenizer:
    """A stage-2 de-tokenizer initialised from stage 1 with the zero-extended ``conv_in`` (§10)."""
    stage2 = Detokenizer(config.edit_detokenizer)
    source = Detokenizer(config.detokenizer)
    source.load_state_dict(stage1.state_dict())
    expand_conv_in(source.unet)
    missing, unexpected = stage2.load_state_dict(source.state_dict(), strict=False)
    if missing or unexpected:
        raise ConfigError(f"stage-1 weights do not fit the stage-2 de-tokenizer: {missing[:3]} {unexpected[:3]}")
    return stage2


def detokenizer_stage2(
    detok: Detokenizer,
    vision: QwenViT,
    data: ImageBatches,
    out_dir: str | Path,
    loop: LoopConfig,
    *,
    batch_size: int = 32,
    uncond_prob: float = 0.05,
    condition_drop_prob: float = 0.05,
    progress: bool = True,
) -> LoopResult:
    """Editing: the UNet draws the target from its features, with the source image on ``conv_in``."""
    step_fn = _detok_step(
        detok,
        vision,
        lambda step: data.edits(step, batch_size),
        uncond_prob=uncond_prob,
        condition_drop_prob=condition_drop_prob,
    )
    return _train_detokenizer(2, detok, vision, step_fn, out_dir, loop, progress)


# ---------------------------------------------------------------------------------------------
# LLM stages
# ---------------------------------------------------------------------------------------------


def lvlm_pretrain(
    lvlm: SeedXLVLM,
    vision: QwenViT,
    examples: Callable[[int], list[TrainingExample]],
    out_dir: str | Path,
    loop: LoopConfig,
    *,
    pad_token_id: int = 0,
    gradient_checkpointing: bool = False,
    progress: bool = True,
) -> LoopResult:
    """Multimodal pre-training: every LVLM weight trains (the ViT stays frozen)."""
    frozen(vision)
    lvlm.requires_grad_(True)
    if gradient_checkpointing:
        lvlm.llm.gradient_checkpointing_enable()

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        return lvlm_loss(lvlm, vision, collate(examples(step), pad_token_id=pad_token_id))

    return run_loop("lvlm-pretrain", out_dir, {"lvlm": lvlm}, list(lvlm.parameters()), step_fn, loop, progress=progress)


@dataclass(frozen=True)
class LoraSettings:
    """The reference's LoRA (§11); ``r``/``alpha`` scale down for small models."""

    r: int = 32
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    modules_to_save: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm", "norm")
    train_embeddings: bool = True  # embed_tokens and lm_head trainable as well (§11)


def apply_lora(lvlm: SeedXLVLM, settings: LoraSettings) -> None:
    """Wrap ``lvlm.llm`` with a peft LoRA; resamplers and the patch-position table stay trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        modules_to_save=list(settings.modules_to_save),
        task_type="CAUSAL_LM",
    )
    lvlm.llm = get_peft_model(lvlm.llm, config)
    if settings.train_embeddings:
        base = lvlm.llm.get_base_model()
        base.get_input_embeddings().weight.requires_grad_(True)
        base.lm_head.weight.requires_grad_(True)
    for module in (lvlm.input_resampler, lvlm.output_resampler):
        module.requires_grad_(True)
    lvlm.patch_pos_embed.requires_grad_(True)


def merge_lora(lvlm: SeedXLVLM) -> None:
    """Fold the LoRA deltas and the trained norm copies into plain LLaMA weights (as the release did)."""
    if hasattr(lvlm.llm, "merge_and_unload"):
        lvlm.llm = lvlm.llm.merge_and_unload()


def lvlm_sft(
    lvlm: SeedXLVLM,
    vision: QwenViT,
    examples: Callable[[int], list[TrainingExample]],
    out_dir: str | Path,
    loop: LoopConfig,
    *,
    lora: LoraSettings = LoraSettings(),
    pad_token_id: int = 0,
    merge: bool = True,
    progress: bool = True,
    name: str = "lvlm-sft",
) -> LoopResult:
    """Instruction tuning with a fresh LoRA on the (merged) pre-trained LLM; merged at the end.

    ``name`` labels progress and checkpoints (the miniature's agent tuning reuses this stage as ``lvlm-agent``).
    """
    frozen(vision)
    lvlm.requires_grad_(False)
    apply_lora(lvlm, lora)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        return lvlm_loss(lvlm, vision, collate(examples(step), pad_token_id=pad_token_id))

    params = [p for p in lvlm.parameters() if p.requires_grad]
    result = run_loop(name, out_dir, {"lvlm": lvlm}, params, step_fn, loop, progress=progress)
    if merge and result.finished:
        merge_lora(lvlm)
    return result


# ---------------------------------------------------------------------------------------------
# Stage checkpoints
# ---------------------------------------------------------------------------------------------


def _load_module(module: nn.Module, folder: Path, name: str) -> None:
    from safetensors.torch import load_file

    load_trainable_state({name: module}, load_file(str(folder / "checkpoint" / "weights.safetensors")))
