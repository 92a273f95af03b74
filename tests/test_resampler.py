"""Resamplers: sin-cos table, Qwen attention pool, perceiver (ResamplerXLV2) -- keys, counts, maths."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seedx_agent.config import LVLMConfig, PerceiverConfig, QwenResamplerConfig, SeedXConfig
from seedx_agent.pipeline.resampler import PerceiverResampler, QwenResampler, interpolate_grid_table, sincos_2d

TINY = SeedXConfig.from_preset("tiny-random")


def _count(module: torch.nn.Module) -> int:
    return sum(t.numel() for t in module.state_dict().values())


# -- sin-cos table ---------------------------------------------------------------------------------


def test_sincos_2d_tiny_hand_checked() -> None:
    # D=4: each half has one frequency (omega=1): [sin p, cos p]; first half = column x, second = row y.
    s1, c1 = math.sin(1.0), math.cos(1.0)
    expected = torch.tensor(
        [
            [0.0, 1.0, 0.0, 1.0],  # (x=0, y=0)
            [s1, c1, 0.0, 1.0],  # (x=1, y=0)
            [0.0, 1.0, s1, c1],  # (x=0, y=1)
            [s1, c1, s1, c1],  # (x=1, y=1)
        ]
    )
    table = sincos_2d(4, 2)
    assert table.dtype == torch.float32
    torch.testing.assert_close(table, expected, rtol=0, atol=1e-7)


def test_sincos_2d_frequencies_and_layout() -> None:
    # D=8: per half [sin(p*w0), sin(p*w1), cos(p*w0), cos(p*w1)] with w = 10000^(-k/2) = (1, 0.01).
    table = sincos_2d(8, 3)
    assert table.shape == (9, 8)
    x, y = 2.0, 1.0  # raster position 5 = y*3 + x
    expected = [math.sin(x), math.sin(x / 100), math.cos(x), math.cos(x / 100)]
    expected += [math.sin(y), math.sin(y / 100), math.cos(y), math.cos(y / 100)]
    torch.testing.assert_close(table[5], torch.tensor(expected), rtol=0, atol=1e-7)


def test_sincos_2d_rejects_bad_dim() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d(6, 2)


def test_interpolate_grid_table_matches_bicubic_in_fp32() -> None:
    torch.manual_seed(0)
    table = torch.randn(4, 3)  # 2x2 grid, 3 channels
    assert interpolate_grid_table(table, 2) is table  # same size: untouched
    grid = table.reshape(1, 2, 2, 3).permute(0, 3, 1, 2)  # (1, C, 2, 2)
    manual = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
    manual = manual.permute(0, 2, 3, 1).reshape(16, 3)
    torch.testing.assert_close(interpolate_grid_table(table, 4), manual)
    # Low-precision tables are interpolated in fp32 and only the result is rounded.
    low = interpolate_grid_table(table.to(torch.bfloat16), 4)
    assert low.dtype == torch.bfloat16
    expected = interpolate_grid_table(table.to(torch.bfloat16).float(), 4).to(torch.bfloat16)
    assert torch.equal(low, expected)


# -- QwenResampler ---------------------------------------------------------------------------------


def test_qwen_resampler_official_keys_and_counts() -> None:
    lvlm = LVLMConfig()
    with torch.device("meta"):
        input_resampler = QwenResampler(lvlm.input_resampler)
        output_resampler = QwenResampler(lvlm.output_resampler)
        attn_pool = QwenResampler(QwenResamplerConfig(grid=16, embed_dim=4096, num_heads=32, kv_dim=1664, ln_eps=1e-6))
    shapes = {k: tuple(v.shape) for k, v in input_resampler.state_dict().items()}
    assert shapes == {
        "pos_embed": (64, 5120),
        "query": (64, 5120),
        "kv_proj.weight": (5120, 4096),
        "attn.in_proj_weight": (15360, 5120),
        "attn.in_proj_bias": (15360,),
        "attn.out_proj.weight": (5120, 5120),
        "attn.out_proj.bias": (5120,),
        "ln_q.weight": (5120,),
        "ln_q.bias": (5120,),
        "ln_kv.weight": (5120,),
        "ln_kv.bias": (5120,),
    }
    assert tuple(output_resampler.state_dict()["kv_proj.weight"].shape) == (4096, 5120)
    # Parameter counts of reference §4.2 (pos_embed included: it is in the state dict).
    assert _count(attn_pool) == 76_054_528
    assert _count(input_resampler) == 126_525_440
    assert _count(output_resampler) == 88_637_440
    assert attn_pool.ln_q.eps == 1e-6 and input_resampler.ln_kv.eps == 1e-5
    assert input_resampler.pos_embed.requires_grad is False
    assert input_resampler.query.requires_grad is True


def test_qwen_resampler_identity_kv_proj_when_dims_match() -> None:
    resampler = QwenResampler(QwenResamplerConfig(grid=2, embed_dim=16, num_heads=2, kv_dim=16))
    assert isinstance(resampler.kv_proj, torch.nn.Identity)
    assert not any(k.startswith("kv_proj") for k in resampler.state_dict())
    torch.testing.assert_close(resampler.pos_embed.data, sincos_2d(16, 2))


def _reference_qwen_resampler(module: QwenResampler, x: torch.Tensor) -> torch.Tensor:
    """Hand-written §4.1 forward for one sample x (L, kv_dim), nn.MultiheadAttention block layout."""
    cfg = module.config
    embed, heads = cfg.embed_dim, cfg.num_heads
    head_dim = embed // heads
    key_grid = math.isqrt(x.shape[0])
    pos = module.pos_embed.data
    if key_grid != cfg.grid:
        grid = pos.reshape(1, cfg.grid, cfg.grid, embed).permute(0, 3, 1, 2)
        key_pos = F.interpolate(grid, size=(key_grid, key_grid), mode="bicubic", align_corners=False)
        key_pos = key_pos.permute(0, 2, 3, 1).reshape(-1, embed)
    else:
        key_pos = pos
    kv = F.layer_norm(x @ module.kv_proj.weight.T, (embed,), module.ln_kv.weight, module.ln_kv.bias, cfg.ln_eps)
    query = F.layer_norm(module.query, (embed,), module.ln_q.weight, module.ln_q.bias, cfg.ln_eps) + pos
    w, b = module.attn.in_proj_weight, module.attn.in_proj_bias
    q_all = query @ w[:embed].T + b[:embed]
    k_all = (kv + key_pos) @ w[embed : 2 * embed].T + b[embed : 2 * embed]
    v_all = kv @ w[2 * embed :].T + b[2 * embed :]
    outs = []
    for h in range(heads):
        sl = slice(h * head_dim, (h + 1) * head_dim)
        scores = q_all[:, sl] @ k_all[:, sl].T / math.sqrt(head_dim)
        outs.append(scores.softmax(-1) @ v_all[:, sl])
    return torch.cat(outs, dim=1) @ module.attn.out_proj.weight.T + module.attn.out_proj.bias


@pytest.mark.parametrize("num_tokens", [4, 16, 64])  # equal to, and larger than, the 2x2 query grid
def test_qwen_resampler_matches_hand_written_reference(num_tokens: int) -> None:
    torch.manual_seed(0)
    resampler = QwenResampler(TINY.lvlm.input_resampler).eval()  # grid 2, 64-d, 4 heads, kv 48
    with torch.no_grad():
        for p in (resampler.ln_q.weight, resampler.ln_q.bias, resampler.ln_kv.weight, resampler.ln_kv.bias):
            p.normal_(0.0, 0.5)
    x = torch.randn(3, num_tokens, 48)
    with torch.no_grad():
        out = resampler(x)
        assert out.shape == (3, 4, 64)
        for i in range(3):
            torch.testing.assert_close(out[i], _reference_qwen_resampler(resampler, x[i]), rtol=1e-4, atol=1e-5)


def test_qwen_resampler_key_positions_are_interpolated() -> None:
    # With interpolated key positions the result differs from using (wrongly) no key positions at all.
    torch.manual_seed(1)
    resampler = QwenResampler(QwenResamplerConfig(grid=2, embed_dim=16, num_heads=2, kv_dim=16)).eval()
    x = torch.randn(1, 16, 16)
    with torch.no_grad():
        out = resampler(x)
        saved = resampler.pos_embed.data.clone()
        resampler.pos_embed.data.zero_()
        no_pos = resampler(x)
        resampler.pos_embed.data.copy_(saved)
    assert not torch.allclose(out, no_pos, atol=1e-4)


def test_qwen_resampler_rejects_non_square_token_count() -> None:
    resampler = QwenResampler(TINY.lvlm.input_resampler)
    with pytest.raises(ValueError, match=r"square number of input tokens.*got 10"):
        resampler(torch.randn(1, 10, 48))
    with pytest.raises(ValueError, match="48"):
        resampler(torch.randn(1, 16, 47))


# -- PerceiverResampler ----------------------------------------------------------------------------


def _perceiver_expected_shapes(cfg: PerceiverConfig) -> dict[str, tuple[int, ...]]:
    dim, inner, ff = cfg.dim, cfg.heads * cfg.dim_head, cfg.dim * cfg.ff_mult
    shapes: dict[str, tuple[int, ...]] = {
        "latents": (1, cfg.num_latents, dim),
        "proj_in.weight": (dim, cfg.input_dim),
        "proj_in.bias": (dim,),
    }
    for layer in range(cfg.depth):
        p = f"layers.{layer}"
        shapes |= {
            f"{p}.0.norm1.weight": (dim,),
            f"{p}.0.norm1.bias": (dim,),
            f"{p}.0.norm2.weight": (dim,),
            f"{p}.0.norm2.bias": (dim,),
            f"{p}.0.to_q.weight": (inner, dim),
            f"{p}.0.to_kv.weight": (2 * inner, dim),
            f"{p}.0.to_out.weight": (dim, inner),
            f"{p}.1.0.weight": (dim,),
            f"{p}.1.0.bias": (dim,),
            f"{p}.1.1.weight": (ff, dim),
            f"{p}.1.3.weight": (dim, ff),
        }
    shapes |= {
        "norm_out.weight": (dim,),
        "norm_out.bias": (dim,),
        "unet_proj_1.weight": (cfg.prompt_dims[0], dim),
        "unet_proj_1.bias": (cfg.prompt_dims[0],),
        "unet_proj_2.weight": (cfg.prompt_dims[1], dim),
        "unet_proj_2.bias": (cfg.prompt_dims[1],),
        "unet_attnpool.positional_embedding": (cfg.num_latents + 1, dim),
    }
    for name in ("q_proj", "k_proj", "v_proj"):
        shapes |= {f"unet_attnpool.{name}.weight": (dim, dim), f"unet_attnpool.{name}.bias": (dim,)}
    shapes |= {"unet_attnpool.c_proj.weight": (cfg.pooled_dim, dim), "unet_attnpool.c_proj.bias": (cfg.pooled_dim,)}
    return shapes


@pytest.mark.parametrize("cfg", [PerceiverConfig(), TINY.detokenizer.perceiver], ids=["official", "tiny"])
def test_perceiver_keys_and_shapes(cfg: PerceiverConfig) -> None:
    with torch.device("meta"):
        perceiver = PerceiverResampler(cfg)
    shapes = {k: tuple(v.shape) for k, v in perceiver.state_dict().items()}
    assert shapes == _perceiver_expected_shapes(cfg)


def test_perceiver_official_parameter_count() -> None:
    with torch.device("meta"):
        perceiver = PerceiverResampler(PerceiverConfig())
    assert _count(perceiver) == 61_245_696
    # §13.4 spot checks
    sd = perceiver.state_dict()
    assert tuple(sd["latents"].shape) == (1, 64, 1024)
    assert tuple(sd["layers.3.0.to_kv.weight"].shape) == (2048, 1024)
    assert tuple(sd["unet_attnpool.c_proj.weight"].shape) == (1280, 1024)


def _reference_perceiver(module: PerceiverResampler, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """§9.1 written out for one sample x (N, input_dim) with explicit per-head loops."""
    cfg = module.config
    dim, heads, dh = cfg.dim, cfg.heads, cfg.dim_head

    def ln(t: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
        return F.layer_norm(t, (dim,), norm.weight, norm.bias, norm.eps)

    inputs = x @ module.proj_in.weight.T + module.proj_in.bias
    latents = module.latents[0]
    for attention, ff in module.layers:
        xi, li = ln(inputs, attention.norm1), ln(latents, attention.norm2)
        q = li @ attention.to_q.weight.T
        kv = torch.cat([xi, li]) @ attention.to_kv.weight.T
        k, v = kv[:, : heads * dh], kv[:, heads * dh :]
        outs = []
        for h in range(heads):
            sl = slice(h * dh, (h + 1) * dh)
            scores = q[:, sl] @ k[:, sl].T / math.sqrt(dh)
            outs.append(scores.softmax(-1) @ v[:, sl])
        latents = latents + torch.cat(outs, 1) @ attention.to_out.weight.T
        hidden = F.gelu(ln(latents, ff[0]) @ ff[1].weight.T)
        latents = latents + hidden @ ff[3].weight.T
    hidden = ln(latents, module.norm_out)
    prompt = torch.cat(
        [
            hidden @ module.unet_proj_1.weight.T + module.unet_proj_1.bias,
            hidden @ module.unet_proj_2.weight.T + module.unet_proj_2.bias,
        ],
        dim=1,
    )
    pool = module.unet_attnpool
    seq = torch.cat([hidden.mean(0, keepdim=True), hidden]) + pool.positional_embedding
    q = seq @ pool.q_proj.weight.T + pool.q_proj.bias
    k = seq @ pool.k_proj.weight.T + pool.k_proj.bias
    v = seq @ pool.v_proj.weight.T + pool.v_proj.bias
    pdh = dim // cfg.pool_heads
    outs = []
    for h in range(cfg.pool_heads):
        sl = slice(h * pdh, (h + 1) * pdh)
        outs.append((q[:, sl] @ k[:, sl].T / math.sqrt(pdh)).softmax(-1) @ v[:, sl])
    all_tokens = torch.cat(outs, 1) @ pool.c_proj.weight.T + pool.c_proj.bias  # every query, as CLIP's pool
    return prompt, all_tokens[0]


@pytest.mark.parametrize("num_tokens", [256, 64])
def test_perceiver_matches_reference_for_256_and_64_tokens(num_tokens: int) -> None:
    torch.manual_seed(0)
    cfg = TINY.detokenizer.perceiver
    perceiver = PerceiverResampler(cfg).eval()
    x = torch.randn(2, num_tokens, cfg.input_dim)
    with torch.no_grad():
        prompt, pooled = perceiver(x)
        assert prompt.shape == (2, cfg.num_latents, cfg.cross_attention_dim)
        assert pooled.shape == (2, cfg.pooled_dim)
        for i in range(2):
            ref_prompt, ref_pooled = _reference_perceiver(perceiver, x[i])
            torch.testing.assert_close(prompt[i], ref_prompt, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(pooled[i], ref_pooled, rtol=1e-4, atol=1e-5)


def test_perceiver_normalize_is_l2_over_the_token_axis() -> None:
    torch.manual_seed(0)
    cfg = TINY.detokenizer.perceiver
    plain = PerceiverResampler(cfg).eval()
    normalising = PerceiverResampler(cfg.model_copy(update={"normalize": True})).eval()
    normalising.load_state_dict(plain.state_dict())
    x = torch.randn(1, 16, cfg.input_dim) * 5
    unit = x / x.norm(dim=1, keepdim=True)  # every channel has unit norm over the 16 tokens
    with torch.no_grad():
        a = normalising(x)
        b = plain(unit)
        c = plain(x)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    assert not torch.allclose(a[0], c[0], atol=1e-3)


def test_perceiver_low_precision_runs_and_stays_close() -> None:
    torch.manual_seed(0)
    cfg = TINY.detokenizer.perceiver
    perceiver = PerceiverResampler(cfg).eval()
    x = torch.randn(2, 64, cfg.input_dim)
    with torch.no_grad():
        ref_prompt, ref_pooled = perceiver(x)
        low_prompt, low_pooled = perceiver.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert low_prompt.dtype == torch.bfloat16
    torch.testing.assert_close(low_prompt.float(), ref_prompt, rtol=0.05, atol=0.05)
    torch.testing.assert_close(low_pooled.float(), ref_pooled, rtol=0.05, atol=0.05)


def test_perceiver_rejects_wrong_input_dim() -> None:
    perceiver = PerceiverResampler(TINY.detokenizer.perceiver)
    with pytest.raises(ValueError, match=r"\(batch, tokens, 48\)"):
        perceiver(torch.randn(1, 8, 32))
