"""Qwen-VL ViT: shapes, official keys and counts, the per-head qkv layout, proj, positions, 4-to-1 pooling."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from seedx_agent.config import SeedXConfig, VisionConfig
from seedx_agent.errors import InvalidImageError
from seedx_agent.pipeline.vision import QwenViT, VisualAttention, pool_tokens_4to1

TINY_VISION = SeedXConfig.from_preset("tiny-random").vision  # 56 px, patch 14 -> 4x4 tokens, pos table 2x2


@pytest.fixture(scope="module")
def tiny_vit() -> QwenViT:
    torch.manual_seed(0)
    vit = QwenViT(TINY_VISION).eval()
    with torch.no_grad():  # non-trivial norms and biases so every term of the maths shows
        for name, param in vit.named_parameters():
            if re.search(r"(ln_\w+|ln_q|ln_kv)\.(weight|bias)$|\.bias$", name):
                param.normal_(0.5 if name.endswith("weight") else 0.0, 0.2)
    return vit


def test_output_shape_and_dtype_cast(tiny_vit: QwenViT) -> None:
    pixels = torch.randn(3, 3, 56, 56, dtype=torch.float64)  # cast to the weights' dtype inside
    with torch.no_grad():
        out = tiny_vit(pixels)
    assert out.shape == (3, TINY_VISION.pool_grid**2, TINY_VISION.output_dim) == (3, 16, 48)
    assert out.dtype == torch.float32


def test_batched_equals_one_by_one(tiny_vit: QwenViT) -> None:
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        batched = tiny_vit(pixels)
        single = torch.cat([tiny_vit(pixels[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_rejects_wrong_pixel_shape(tiny_vit: QwenViT) -> None:
    with pytest.raises(InvalidImageError, match=r"\(crops, 3, 56, 56\).*\(1, 3, 64, 64\)"):
        tiny_vit(torch.zeros(1, 3, 64, 64))


# -- the per-head interleaved qkv layout (§2 gotcha) ----------------------------------------------


def _attention_reference(attn: VisualAttention, x: torch.Tensor, *, interleaved: bool) -> torch.Tensor:
    """x (T, W). interleaved: rows head0[q,k,v], head1[q,k,v]...; otherwise [all q; all k; all v]."""
    width = x.shape[1]
    heads, dh = attn.heads, width // attn.heads
    w, b = attn.in_proj.weight, attn.in_proj.bias
    outs = []
    for h in range(heads):
        if interleaved:
            base = h * 3 * dh
            rows_q, rows_k, rows_v = (slice(base + i * dh, base + (i + 1) * dh) for i in range(3))
        else:
            rows_q, rows_k, rows_v = (slice(i * width + h * dh, i * width + (h + 1) * dh) for i in range(3))
        q = x @ w[rows_q].T + b[rows_q]
        k = x @ w[rows_k].T + b[rows_k]
        v = x @ w[rows_v].T + b[rows_v]
        outs.append((q @ k.T / math.sqrt(dh)).softmax(-1) @ v)
    return attn.out_proj(torch.cat(outs, dim=1))


def test_attention_uses_per_head_interleaved_qkv() -> None:
    torch.manual_seed(0)
    attn = VisualAttention(width=8, heads=2).eval()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        out = attn(x)
        for i in range(2):
            interleaved = _attention_reference(attn, x[i], interleaved=True)
            block = _attention_reference(attn, x[i], interleaved=False)
            torch.testing.assert_close(out[i], interleaved, rtol=1e-5, atol=1e-6)
            # The nn.MultiheadAttention-style [q;k;v] reading of the same weights is a different function.
            assert (out[i] - block).abs().max() > 1e-2


def _vit_reference(vit: QwenViT, pixels: torch.Tensor) -> torch.Tensor:
    """§2 written out: conv, bicubic fp32 positions, ln_pre, blocks, attn_pool, ln_post, x @ proj."""
    cfg = vit.config
    x = F.conv2d(pixels, vit.conv1.weight, stride=cfg.patch_size).flatten(2).transpose(1, 2)  # (N, T, W)
    g0, g = cfg.pos_embed_grid, cfg.patch_grid
    table = vit.positional_embedding.reshape(1, g0, g0, cfg.width).permute(0, 3, 1, 2)
    pos = F.interpolate(table.float(), size=(g, g), mode="bicubic", align_corners=False)
    x = x + pos.permute(0, 2, 3, 1).reshape(g * g, cfg.width)
    x = vit.ln_pre(x)
    outs = []
    for sample in x:
        for block in vit.transformer.resblocks:
            sample = sample + _attention_reference(block.attn, block.ln_1(sample), interleaved=True)
            sample = sample + block.mlp.c_proj(F.gelu(block.mlp.c_fc(block.ln_2(sample))))
        outs.append(sample)
    pooled = vit.attn_pool(torch.stack(outs))
    return vit.ln_post(pooled) @ vit.proj


def test_full_forward_matches_reference(tiny_vit: QwenViT) -> None:
    torch.manual_seed(2)
    pixels = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(tiny_vit(pixels), _vit_reference(tiny_vit, pixels), rtol=1e-4, atol=1e-5)


def test_proj_is_right_multiplied(tiny_vit: QwenViT) -> None:
    captured: list[torch.Tensor] = []
    handle = tiny_vit.ln_post.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.no_grad():
            out = tiny_vit(torch.randn(1, 3, 56, 56))
    finally:
        handle.remove()
    normed = captured[0]
    torch.testing.assert_close(out, normed @ tiny_vit.proj)
    assert (out - normed @ tiny_vit.proj.T).abs().max() > 1e-2  # a Linear-style x @ P.T would differ


def test_positional_table_is_interpolated_bicubically_to_the_patch_grid(tiny_vit: QwenViT) -> None:
    captured: list[torch.Tensor] = []
    handle = tiny_vit.ln_pre.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    pixels = torch.randn(1, 3, 56, 56)
    try:
        with torch.no_grad():
            tiny_vit(pixels)
            patches = tiny_vit.conv1(pixels).flatten(2).transpose(1, 2)  # (1, 16, 32)
    finally:
        handle.remove()
    added = captured[0] - patches  # (1, 16, width): what was added to the 4x4 patch tokens
    table = tiny_vit.positional_embedding.detach().reshape(1, 2, 2, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(table, size=(4, 4), mode="bicubic", align_corners=False)
    torch.testing.assert_close(added[0], expected.permute(0, 2, 3, 1).reshape(16, 32), rtol=1e-5, atol=1e-6)
    # Corner token (0,0) is not the raw table entry: the table really was resized, not padded or tiled.
    assert not torch.allclose(added[0, 0], tiny_vit.positional_embedding[0].detach())


# -- official geometry ----------------------------------------------------------------------------


def test_official_parameter_count_and_parts() -> None:
    with torch.device("meta"):
        vit = QwenViT(VisionConfig())
    assert sum(p.numel() for p in vit.parameters()) == 1_935_610_624

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert count(vit.transformer.resblocks[0]) == 38_361_728
    assert count(vit.attn_pool) == 76_054_528
    assert vit.proj.numel() == 16_777_216
    assert vit.conv1.weight.numel() == 978_432 and vit.conv1.bias is None
    assert vit.positional_embedding.numel() == 425_984


def test_official_state_dict_keys_and_shapes() -> None:
    with torch.device("meta"):
        vit = QwenViT(VisionConfig())
    shapes = {k: tuple(v.shape) for k, v in vit.state_dict().items()}
    block = {k.split(".", 3)[3]: s for k, s in shapes.items() if k.startswith("transformer.resblocks.0.")}
    assert block == {
        "ln_1.weight": (1664,), "ln_1.bias": (1664,),
        "attn.in_proj.weight": (4992, 1664), "attn.in_proj.bias": (4992,),
        "attn.out_proj.weight": (1664, 1664), "attn.out_proj.bias": (1664,),
        "ln_2.weight": (1664,), "ln_2.bias": (1664,),
        "mlp.c_fc.weight": (8192, 1664), "mlp.c_fc.bias": (8192,),
        "mlp.c_proj.weight": (1664, 8192), "mlp.c_proj.bias": (1664,),
    }  # fmt: skip
    others = {k: s for k, s in shapes.items() if not k.startswith("transformer.")}
    assert others == {
        "conv1.weight": (1664, 3, 14, 14),
        "positional_embedding": (256, 1664),
        "ln_pre.weight": (1664,), "ln_pre.bias": (1664,),
        "attn_pool.pos_embed": (256, 4096), "attn_pool.query": (256, 4096),
        "attn_pool.kv_proj.weight": (4096, 1664),
        "attn_pool.attn.in_proj_weight": (12288, 4096), "attn_pool.attn.in_proj_bias": (12288,),
        "attn_pool.attn.out_proj.weight": (4096, 4096), "attn_pool.attn.out_proj.bias": (4096,),
        "attn_pool.ln_q.weight": (4096,), "attn_pool.ln_q.bias": (4096,),
        "attn_pool.ln_kv.weight": (4096,), "attn_pool.ln_kv.bias": (4096,),
        "ln_post.weight": (4096,), "ln_post.bias": (4096,),
        "proj": (4096, 4096),
    }  # fmt: skip
    assert len(shapes) == 48 * 12 + len(others)
    assert vit.ln_pre.eps == vit.ln_post.eps == vit.attn_pool.ln_q.eps == 1e-6


# -- 4-to-1 pooling -------------------------------------------------------------------------------


def test_pool_tokens_4to1_averages_raster_strips_not_squares() -> None:
    # A 4x4 raster grid whose token value is its index: strips of 4 = one row each here.
    tokens = torch.arange(16, dtype=torch.float32).view(1, 16, 1)
    pooled = pool_tokens_4to1(tokens)
    assert pooled.shape == (1, 4, 1)
    assert pooled.flatten().tolist() == [1.5, 5.5, 9.5, 13.5]
    # A 2x2 spatial pool would give (0+1+4+5)/4 = 2.5 for the first token.
    features = torch.stack([torch.arange(8.0), -torch.arange(8.0)], dim=1).view(1, 8, 2)
    assert pool_tokens_4to1(features).tolist() == [[[1.5, -1.5], [5.5, -5.5]]]
    # Batched and non-contiguous input.
    wide = torch.randn(3, 2, 256).transpose(1, 2)  # (3, 256, 2), non-contiguous
    torch.testing.assert_close(pool_tokens_4to1(wide), wide.reshape(3, 64, 4, 2).mean(2))


def test_pool_tokens_4to1_rejects_bad_token_count() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        pool_tokens_4to1(torch.zeros(1, 6, 2))
