"""The LVLM: LLaMA + input/output resamplers + patch-position table, the embedding splice and losses.

Attribute names match the official ``ContinuousLVLM`` so that the agent file's keys
(``patch_pos_embed``, ``input_resampler.*``, ``output_resampler.*``) load without renaming
(reference §4.3, §5.5, §6.3, §13.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seedx_agent.config import LLMConfig, LVLMConfig
from seedx_agent.errors import ImageTokenMismatchError
from seedx_agent.pipeline.resampler import QwenResampler
from seedx_agent.pipeline.vision import pool_tokens_4to1

__all__ = ["LVLMOutput", "SeedXLVLM", "scatter_image_embeds"]


@dataclass
class LVLMOutput:
    """Losses and tensors of one training/teacher-forced forward pass."""

    loss: torch.Tensor | None
    lm_loss: torch.Tensor | None
    rec_loss: torch.Tensor | None
    logits: torch.Tensor  # (batch, seq, vocab)
    hidden_states: torch.Tensor  # (batch, seq, hidden), final layer after the last RMSNorm
    regressed_features: torch.Tensor | None  # (num_gen_images, num_image_tokens, vit_dim)


def scatter_image_embeds(
    inputs_embeds: torch.Tensor, ids_cmp_mask: torch.Tensor, image_embeds: torch.Tensor | None
) -> torch.Tensor:
    """Replace the embeddings at the masked positions by the image tokens, in row-major order.

    inputs_embeds: (batch, seq, hidden); ids_cmp_mask: (batch, seq) bool;
    image_embeds: (num_crops, tokens_per_crop, hidden). The number of masked positions must equal
    num_crops * tokens_per_crop; otherwise the features would silently land on the wrong tokens.
    """
    num_positions = int(ids_cmp_mask.sum())
    num_vectors = 0 if image_embeds is None else image_embeds.shape[0] * image_embeds.shape[1]
    if num_positions != num_vectors:
        raise ImageTokenMismatchError(
            f"the prompt has {num_positions} image placeholder positions but {num_vectors} image feature "
            f"vectors were given ({0 if image_embeds is None else image_embeds.shape[0]} crops); every crop "
            "needs exactly one image block of num_image_tokens placeholders"
        )
    if num_positions == 0:
        return inputs_embeds
    flat = image_embeds.reshape(-1, image_embeds.shape[-1]).to(inputs_embeds.dtype)  # (crops*tokens, hidden)
    out = inputs_embeds.clone()
    out[ids_cmp_mask] = flat
    return out


class SeedXLVLM(nn.Module):
    """LLaMA with SEED-X's visual input and output heads."""

    def __init__(self, llm_config: LLMConfig, lvlm_config: LVLMConfig) -> None:
        super().__init__()
        from transformers import LlamaForCausalLM

        self.llm_config = llm_config
        self.config = lvlm_config
        self.llm = LlamaForCausalLM(llm_config.to_hf())
        self.input_resampler = QwenResampler(lvlm_config.input_resampler)
        self.output_resampler = QwenResampler(lvlm_config.output_resampler)
        hidden = llm_config.hidden_size
        # (4, hidden): right / bottom / left / top anchors, init N(0,1)/sqrt(hidden) as the official code.
        self.patch_pos_embed = nn.Parameter(torch.randn(4, hidden) * hidden**-0.5)

    @property
    def device(self) -> torch.device:
        return self.patch_pos_embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    # -- image inputs ----------------------------------------------------------------------------
    @property
    def backbone(self) -> nn.Module:
        """The LLaMA decoder stack (``LlamaModel``), also while a peft LoRA wraps ``llm`` during SFT."""
        base = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        return base.model

    @property
    def lm_head(self) -> nn.Module:
        base = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        return base.lm_head

    def patch_position_vectors(self, patch_positions: torch.Tensor) -> torch.Tensor:
        """(crops, 2) relative (x, y) -> (crops, hidden): ``[x, y, 1-x, 1-y] / 2 @ E`` (§4.3)."""
        x, y = patch_positions[:, 0:1], patch_positions[:, 1:2]
        weights = torch.cat([x, y, 1 - x, 1 - y], dim=1) / 2  # (crops, 4)
        return weights.to(self.patch_pos_embed.dtype) @ self.patch_pos_embed

    def embed_images(self, vit_features: torch.Tensor, patch_positions: torch.Tensor | None) -> torch.Tensor:
        """ViT features (crops, vit_tokens, vit_dim) -> LLM input tokens (crops, image_tokens, hidden)."""
        param = self.patch_pos_embed
        embeds = self.input_resampler(vit_features.to(device=param.device, dtype=param.dtype))
        if self.config.use_patch_pos:
            if patch_positions is None:
                raise ValueError("patch_positions are required when use_patch_pos is on")
            pos = self.patch_position_vectors(patch_positions.to(param.device))  # (crops, hidden)
            embeds = embeds + pos[:, None, :]
        return embeds

    def regress_images(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Placeholder hidden states (n, image_tokens, hidden) -> ViT-like features (n, image_tokens, vit_dim)."""
        return self.output_resampler(hidden_states.to(self.patch_pos_embed.dtype))

    def inputs_embeds(
        self,
        input_ids: torch.Tensor,
        image_embeds: torch.Tensor | None = None,
        ids_cmp_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with image tokens spliced in at ``ids_cmp_mask`` (counted, see §5.5)."""
        embeds = self.llm.get_input_embeddings()(input_ids)  # (batch, seq, hidden)
        if ids_cmp_mask is None:
            ids_cmp_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        return scatter_image_embeds(embeds, ids_cmp_mask.to(embeds.device), image_embeds)

    # -- training forward ------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        ids_cmp_mask: torch.Tensor | None = None,
        ids_gen_mask: torch.Tensor | None = None,
        target_vit_features: torch.Tensor | None = None,
    ) -> LVLMOutput:
        """Teacher-forced pass: LM loss on ``labels`` + ``rec_loss_scale`` x MSE on generated images.

        ``target_vit_features`` are the raw ViT features (n, 4*image_tokens, vit_dim) of the images to
        generate; they are 4-to-1 pooled here (§6.3) and detached.
        """
        embeds = self.inputs_embeds(input_ids, image_embeds, ids_cmp_mask)
        out = self.backbone(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
        hidden = out.last_hidden_state  # (batch, seq, hidden)
        logits = self.lm_head(hidden)
        lm_loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
            lm_loss = F.cross_entropy(shift_logits.float(), shift_labels, ignore_index=-100)
        regressed, rec_loss = None, None
        if ids_gen_mask is not None and bool(ids_gen_mask.any()):
            n_tokens = self.config.num_image_tokens
            gen_hidden = hidden[ids_gen_mask.to(hidden.device)]
            if gen_hidden.shape[0] % n_tokens:
                raise ImageTokenMismatchError(
                    f"ids_gen_mask marks {gen_hidden.shape[0]} positions, not a multiple of {n_tokens} image tokens"
                )
            regressed = self.regress_images(gen_hidden.reshape(-1, n_tokens, gen_hidden.shape[-1]))
            if target_vit_features is not None:
                target = pool_tokens_4to1(target_vit_features.to(regressed.device)).detach()
                if target.shape != regressed.shape:
                    raise ImageTokenMismatchError(
                        f"{regressed.shape[0]} generated image blocks but targets of shape {tuple(target.shape)}"
                    )
                rec_loss = F.mse_loss(regressed.float(), target.float())
        loss = None
        if lm_loss is not None or rec_loss is not None:
            loss = torch.zeros((), device=logits.device)
            if lm_loss is not None:
                loss = loss + self.config.lm_loss_scale * lm_loss
            if rec_loss is not None:
                loss = loss + self.config.rec_loss_scale * rec_loss
        return LVLMOutput(loss, lm_loss, rec_loss, logits, hidden, regressed)
