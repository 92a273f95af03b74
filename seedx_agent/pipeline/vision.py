"""The Qwen-VL ViT-G/14 visual encoder with its attention pool (reference §2).

Attribute names equal the keys of the user-extracted ``qwen_vit_G.pt`` (§13.5) so the file loads
strictly. Two details matter for the released weights: the fused ``in_proj`` output is split into
q, k, v *per head* (rows ordered head0[q,k,v], head1[q,k,v], ...), and ``proj`` is right-multiplied
(``x @ proj``), not applied like a Linear layer.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from seedx_agent.config import QwenResamplerConfig, VisionConfig
from seedx_agent.errors import InvalidImageError
from seedx_agent.pipeline.resampler import QwenResampler, interpolate_grid_table

__all__ = ["QwenViT", "VisualAttention", "VisualBlock", "pool_tokens_4to1"]


class VisualAttention(nn.Module):
    """Multi-head self-attention with Qwen-VL's per-head interleaved fused qkv projection."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, width) -> (N, T, width)."""
        batch, tokens, width = x.shape
        # The 3*width outputs are grouped per head: (heads, [q | k | v]) -- not [all q; all k; all v].
        qkv = self.in_proj(x).view(batch, tokens, self.heads, 3 * self.head_dim)  # (N, T, h, 3*dh)
        query, key, value = qkv.transpose(1, 2).split(self.head_dim, dim=-1)  # (N, h, T, dh) each
        out = F.scaled_dot_product_attention(query, key, value)  # (N, h, T, dh), scale 1/sqrt(dh)
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, width))


class VisualBlock(nn.Module):
    """Pre-LN transformer block: ``x += attn(ln_1(x)); x += c_proj(gelu(c_fc(ln_2(x))))``."""

    def __init__(self, width: int, heads: int, mlp_width: int, ln_eps: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=ln_eps)
        self.attn = VisualAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=ln_eps)
        self.mlp = nn.Sequential(
            OrderedDict(
                [("c_fc", nn.Linear(width, mlp_width)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(mlp_width, width))]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    """Holds the blocks under ``resblocks`` so keys read ``transformer.resblocks.{i}.*``."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            VisualBlock(config.width, config.heads, config.mlp_width, config.ln_eps) for _ in range(config.layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class QwenViT(nn.Module):
    """Normalised crops (N, 3, S, S) -> ViT features (N, pool_grid², output_dim) (reference §2)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.conv1 = nn.Conv2d(3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.positional_embedding = nn.Parameter(torch.randn(config.pos_embed_grid**2, width) * width**-0.5)
        self.ln_pre = nn.LayerNorm(width, eps=config.ln_eps)
        self.transformer = _Transformer(config)
        pool_config = QwenResamplerConfig(
            grid=config.pool_grid,
            embed_dim=config.output_dim,
            num_heads=config.pool_heads,
            kv_dim=width,
            ln_eps=config.ln_eps,
        )
        self.attn_pool = QwenResampler(pool_config)
        self.ln_post = nn.LayerNorm(config.output_dim, eps=config.ln_eps)
        self.proj = nn.Parameter(torch.randn(config.output_dim, config.output_dim) * config.output_dim**-0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv1.weight.device

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (N, 3, S, S), normalised -> features (N, pool_grid², output_dim)."""
        size = self.config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise InvalidImageError(
                f"QwenViT expects pixel_values of shape (crops, 3, {size}, {size}), got {tuple(pixel_values.shape)}; "
                "prepare crops with seedx_agent.pipeline.anyres.preprocess"
            )
        x = self.conv1(pixel_values.to(device=self.device, dtype=self.dtype))  # (N, width, g, g)
        x = x.flatten(2).transpose(1, 2)  # (N, g², width), raster order
        x = x + interpolate_grid_table(self.positional_embedding, self.config.patch_grid).to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x)  # (N, g², width)
        x = self.attn_pool(x)  # (N, pool_grid², output_dim)
        x = self.ln_post(x)
        return x @ self.proj  # right-multiplication, as the official code


def pool_tokens_4to1(features: torch.Tensor) -> torch.Tensor:
    """Average consecutive groups of 4 tokens: (N, T, D) -> (N, T/4, D) (reference §6.3).

    This is the official ``AvgPool1d(4, 4)`` over the token axis. On a 16x16 raster it averages
    horizontal 1x4 strips, not 2x2 squares; it is the regression target and the de-tokenizer input.
    """
    if features.ndim != 3 or features.shape[1] % 4:
        raise ValueError(
            f"pool_tokens_4to1 expects (batch, tokens, dim) with tokens divisible by 4, got {tuple(features.shape)}"
        )
    batch, tokens, dim = features.shape
    return features.reshape(batch, tokens // 4, 4, dim).mean(dim=2)  # (N, T/4, 4, D) -> (N, T/4, D)
