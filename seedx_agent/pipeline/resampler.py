"""Resamplers: the Qwen-VL attention pool and the de-tokenizer's perceiver (ResamplerXLV2).

``QwenResampler`` (reference §4.1) is used three times: as the ViT's ``attn_pool``, as the LVLM's input
resampler (ViT features -> LLM tokens) and as its output resampler (LLM hidden states -> ViT-like
features). ``PerceiverResampler`` (§9.1) turns ViT(-like) features into SDXL's prompt embeddings and
pooled embedding. Attribute names equal the official state-dict keys (§13.3-§13.5) so released weights
load strictly without renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from seedx_agent.config import PerceiverConfig, QwenResamplerConfig

__all__ = ["PerceiverAttention", "PerceiverResampler", "QwenResampler", "interpolate_grid_table", "sincos_2d"]


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(P,) positions -> (P, dim) table ``[sin(p*w_k), cos(p*w_k)]`` with ``w_k = 10000^(-k/(dim/2))``."""
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)  # (dim/2,)
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # (P, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(embed_dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos table (grid*grid, embed_dim), MAE convention, float32.

    Row p = y * grid + x (raster order). The first half of the channels encodes the column x, the
    second half the row y; each half is ``[sin, cos]`` (reference §4.1). Computed in float64 like the
    official numpy code, then rounded to float32.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim {embed_dim} must be a multiple of 4 for a 2-D sin-cos table")
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # (grid, grid) each; rows[y, x] = y
    col_table = _sincos_1d(embed_dim // 2, cols.reshape(-1))  # (grid², D/2), x of raster position p
    row_table = _sincos_1d(embed_dim // 2, rows.reshape(-1))  # (grid², D/2), y of raster position p
    return torch.cat([col_table, row_table], dim=1).to(torch.float32)


def interpolate_grid_table(table: torch.Tensor, target_grid: int) -> torch.Tensor:
    """Resize a square raster table (g*g, D) to (t*t, D) bicubically, as Qwen-VL's ``get_abs_pos``.

    The interpolation runs in float32 with ``align_corners=False``; the result has the table's dtype.
    A table that already has the target size is returned unchanged.
    """
    source_grid = math.isqrt(table.shape[0])
    if source_grid * source_grid != table.shape[0]:
        raise ValueError(f"position table has {table.shape[0]} rows, which is not a square grid")
    if source_grid == target_grid:
        return table
    dim = table.shape[1]
    image = table.float().reshape(1, source_grid, source_grid, dim).permute(0, 3, 1, 2)  # (1, D, g, g)
    image = F.interpolate(image, size=(target_grid, target_grid), mode="bicubic", align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(target_grid * target_grid, dim).to(table.dtype)  # (t², D)


class QwenResampler(nn.Module):
    """Qwen-VL attention pool: grid² learned queries cross-attend once to the (projected) input tokens.

    Queries carry the fixed sin-cos table; keys carry the same table resized to the input's square
    grid. No output norm or MLP (reference §4.1).
    """

    def __init__(self, config: QwenResamplerConfig) -> None:
        super().__init__()
        self.config = config
        num_queries, embed_dim = config.num_queries, config.embed_dim
        # Fixed table, kept as a frozen Parameter so it is part of the state dict like the official one.
        self.pos_embed = nn.Parameter(sincos_2d(embed_dim, config.grid), requires_grad=False)
        self.query = nn.Parameter(torch.empty(num_queries, embed_dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        if config.kv_dim != embed_dim:
            self.kv_proj: nn.Module = nn.Linear(config.kv_dim, embed_dim, bias=False)
        else:
            self.kv_proj = nn.Identity()
        # batch_first only changes the call convention, not the parameter names or layout.
        self.attn = nn.MultiheadAttention(embed_dim, config.num_heads, batch_first=True)
        self.ln_q = nn.LayerNorm(embed_dim, eps=config.ln_eps)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=config.ln_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Input tokens (N, L, kv_dim), L a perfect square -> pooled tokens (N, grid², embed_dim)."""
        if x.ndim != 3 or x.shape[-1] != self.config.kv_dim:
            raise ValueError(
                f"QwenResampler expects input of shape (batch, tokens, {self.config.kv_dim}), got {tuple(x.shape)}"
            )
        num_tokens = x.shape[1]
        key_grid = math.isqrt(num_tokens)
        if key_grid * key_grid != num_tokens:
            raise ValueError(
                f"QwenResampler needs a square number of input tokens (a raster grid) to place its key "
                f"positions, got {num_tokens}; pass grid*grid tokens such as 64 or 256"
            )
        key_pos = interpolate_grid_table(self.pos_embed, key_grid).to(x.dtype)  # (L, E)
        query_pos = self.pos_embed.to(x.dtype)  # (Q, E)
        kv = self.ln_kv(self.kv_proj(x))  # (N, L, E)
        query = self.ln_q(self.query) + query_pos  # (Q, E)
        query = query.unsqueeze(0).expand(x.shape[0], -1, -1)  # (N, Q, E)
        out, _ = self.attn(query, kv + key_pos, kv, need_weights=False)
        return out  # (N, Q, E)


class PerceiverAttention(nn.Module):
    """Latents attend to ``concat(inputs, latents)``; bias-free projections (reference §9.1)."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split_heads(self, tensor: torch.Tensor) -> torch.Tensor:
        batch, length, _ = tensor.shape
        return tensor.view(batch, length, self.heads, self.dim_head).transpose(1, 2)  # (B, heads, len, dh)

    def forward(self, inputs: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """inputs (B, N, dim), latents (B, L, dim) -> update for the latents (B, L, dim)."""
        inputs = self.norm1(inputs)
        latents = self.norm2(latents)
        query = self._split_heads(self.to_q(latents))  # (B, h, L, dh)
        key, value = self.to_kv(torch.cat([inputs, latents], dim=1)).chunk(2, dim=-1)  # (B, N+L, inner) each
        key, value = self._split_heads(key), self._split_heads(value)  # (B, h, N+L, dh)
        # Scale q and k by dh^-1/4 each (more stable in fp16 than scaling the product); softmax in fp32.
        scale = self.dim_head**-0.25
        scores = (query * scale) @ (key * scale).transpose(-2, -1)  # (B, h, L, N+L)
        weights = torch.softmax(scores.float(), dim=-1).to(value.dtype)
        out = (weights @ value).transpose(1, 2).reshape(latents.shape[0], latents.shape[1], -1)  # (B, L, inner)
        return self.to_out(out)


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    # Indices 0, 1, 3 are the official keys (LayerNorm, Linear, GELU, Linear).
    inner = dim * mult
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(), nn.Linear(inner, dim, bias=False)
    )


class _AttentionPool(nn.Module):
    """CLIP-style attention pool over the latents: mean token prepended, its attended output kept."""

    def __init__(self, num_tokens: int, dim: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(num_tokens + 1, dim) / dim**0.5)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, output_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, dim) with L = num_tokens -> (B, output_dim)."""
        batch, _, dim = tokens.shape
        head_dim = dim // self.heads
        seq = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # (B, L+1, dim)
        seq = seq + self.positional_embedding.to(seq.dtype)
        # Only token 0's output is kept, and every query attends to all tokens, so token 0 alone is queried.
        query = self.q_proj(seq[:, :1]).view(batch, 1, self.heads, head_dim).transpose(1, 2)  # (B, h, 1, dh)
        key = self.k_proj(seq).view(batch, -1, self.heads, head_dim).transpose(1, 2)  # (B, h, L+1, dh)
        value = self.v_proj(seq).view(batch, -1, self.heads, head_dim).transpose(1, 2)  # (B, h, L+1, dh)
        scores = (query * head_dim**-0.5) @ key.transpose(-2, -1)  # (B, h, 1, L+1)
        weights = torch.softmax(scores.float(), dim=-1).to(value.dtype)
        pooled = (weights @ value).reshape(batch, dim)  # (B, h, 1, dh) -> (B, dim)
        return self.c_proj(pooled)


class PerceiverResampler(nn.Module):
    """ResamplerXLV2: ViT(-like) tokens (any count) -> SDXL ``prompt_embeds`` and ``pooled`` (§9.1).

    Order-agnostic (no input positions), so it accepts the 256 raw ViT tokens and the 64 pooled ones.
    """

    def __init__(self, config: PerceiverConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        self.latents = nn.Parameter(torch.randn(1, config.num_latents, dim) / dim**0.5)
        self.proj_in = nn.Linear(config.input_dim, dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, config.heads, config.dim_head), _feed_forward(dim, config.ff_mult)])
            for _ in range(config.depth)
        )
        self.norm_out = nn.LayerNorm(dim)
        self.unet_proj_1 = nn.Linear(dim, config.prompt_dims[0])
        self.unet_proj_2 = nn.Linear(dim, config.prompt_dims[1])
        self.unet_attnpool = _AttentionPool(config.num_latents, dim, config.pool_heads, config.pooled_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, N, input_dim) -> (prompt_embeds (B, num_latents, sum(prompt_dims)), pooled (B, pooled_dim))."""
        if x.ndim != 3 or x.shape[-1] != self.config.input_dim:
            raise ValueError(
                f"PerceiverResampler expects input of shape (batch, tokens, {self.config.input_dim}), "
                f"got {tuple(x.shape)}"
            )
        if self.config.normalize:
            x = F.normalize(x, dim=1)  # SEED-Story: L2 over the token axis (torch's default dim=1)
        inputs = self.proj_in(x)  # (B, N, dim)
        latents = self.latents.expand(x.shape[0], -1, -1)  # (B, L, dim)
        for attention, feed_forward in self.layers:
            latents = latents + attention(inputs, latents)
            latents = latents + feed_forward(latents)
        hidden = self.norm_out(latents)  # (B, L, dim)
        prompt_embeds = torch.cat([self.unet_proj_1(hidden), self.unet_proj_2(hidden)], dim=-1)
        pooled = self.unet_attnpool(hidden)  # (B, pooled_dim)
        return prompt_embeds, pooled
