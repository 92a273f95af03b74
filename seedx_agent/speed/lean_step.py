"""A lean one-token step through a transformers ``LlamaModel``, bit-identical to its ``forward``.

Decoding a reply calls the LLM once per token with a single new position. ``LlamaModel.forward`` then spends
about a millisecond per step (8 layers x 1024) outside the matrix multiplies: the output-capturing and kwargs
decorators, causal-mask construction, per-layer keyword plumbing and output dataclasses. For one query
position without padding none of that changes the numbers, so ``LeanStep`` walks the same submodules with
the same tensor operations in the same order (RMSNorm, q/k/v projections, rotary embedding, cache update,
transformers' own SDPA attention function, o_proj, MLP) and returns the same post-norm hidden states, bit
for bit (tests/test_decode_step.py). Submodule hooks, LoRA wrappers and quantised layers still run, because
every projection is called as a module. It looks the submodules up once (``nn.Module`` attribute access
costs ~2 us, a few hundred times per step) and is built per ``decode`` call, so the model must not be
rewired while a reply is being decoded; ``lean_step`` is the one-off form.

``lean_step_supported`` says when the walk is exact: a LLaMA stack in eval mode with SDPA attention and no
hooks on the stack, its layers or their attention blocks (accelerate offloading, user hooks). Anything else
goes through ``forward`` (``ComparisonSwitches(decode_step="transformers")`` forces that too).

``fuse_qkv`` lets a step read each layer's query, key and value weights in one oneDNN GEMV: it moves the three
weights into one buffer and leaves the three parameters as views of it (same Parameter objects, same
state-dict keys, no extra memory). Each output row of a GEMV is its own dot product, so the fused product
equals the three separate ones bit for bit; it saves two ~50 us oneDNN calls per layer and streams the
weights faster (4.8 vs 5.9 ms for 8 layers x 1024 on 2 cores). Moving or casting the model, or wrapping the
projections (LoRA), breaks the views; the step then notices and uses the three projections again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seedx_agent.speed.cpu_linear import OneDNNLinear, onednn_linear

__all__ = ["LeanStep", "fuse_qkv", "lean_step", "lean_step_supported"]

_FUSED = "_seedx_fused_qkv"  # key in an attention block's __dict__: its _FusedQKV record


def _has_hooks(module: nn.Module) -> bool:
    # ``"_hf_hook" in __dict__``, not hasattr: a missing attribute costs nn.Module an exception (~10 us).
    return bool(module._forward_hooks or module._forward_pre_hooks or "_hf_hook" in module.__dict__)


def lean_step_supported(backbone: nn.Module) -> bool:
    """Whether ``lean_step`` reproduces ``backbone.forward`` exactly for this module (see module docstring)."""
    from transformers.models.llama.modeling_llama import LlamaModel

    if type(backbone) is not LlamaModel or backbone.training:
        return False
    config = backbone.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return False
    if len(backbone.layers) != config.num_hidden_layers:
        return False
    return not any(_has_hooks(m) for m in (backbone, *backbone.layers, *(layer.self_attn for layer in backbone.layers)))


def _plain_projections(block: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear] | None:
    """The block's q/k/v projections when they are bias-free plain linears without hooks, else None."""
    projections = (block.q_proj, block.k_proj, block.v_proj)
    for proj in projections:
        if type(proj) not in (nn.Linear, OneDNNLinear) or proj.bias is not None or _has_hooks(proj):
            return None
    return projections  # type: ignore[return-value]


@dataclass(frozen=True)
class _FusedQKV:
    buffer: torch.Tensor  # (q + k + v rows, hidden): the three weights are its consecutive rows
    pointers: tuple[int, ...]  # data_ptr of the q, k, v weights when fused
    rows: tuple[int, ...]


def _fused(block: nn.Module, projections: tuple[nn.Linear, ...]) -> _FusedQKV | None:
    """The block's fused record while its q/k/v weights are still the views made by ``fuse_qkv``, else None.

    The record keeps the buffer alive, so equal data pointers and row counts mean the same views."""
    record = block.__dict__.get(_FUSED)
    if record is None:
        return None
    for proj, pointer, rows in zip(projections, record.pointers, record.rows, strict=True):
        weight = proj.weight
        if weight.data_ptr() != pointer or weight.shape[0] != rows:
            return None
    return record


def fuse_qkv(backbone: nn.Module) -> int:
    """Make each layer's q/k/v weights views of one (q+k+v, hidden) buffer (module docstring); returns the
    number of layers fused. Layers already fused, or with wrapped/biased projections, are left alone."""
    if not lean_step_supported(backbone):
        return 0
    fused = 0
    with torch.no_grad():
        for layer in backbone.layers:
            block = layer.self_attn
            projections = _plain_projections(block)
            if projections is None:
                continue
            if _fused(block, projections) is not None:
                fused += 1
                continue
            weights = [proj.weight for proj in projections]
            if len({(w.dtype, w.device, w.shape[1]) for w in weights}) != 1:
                continue
            buffer = torch.cat([w.detach() for w in weights])  # (q + k + v rows, hidden)
            start = 0
            for proj in projections:
                rows = proj.weight.shape[0]
                proj.weight.data = buffer[start : start + rows]  # same Parameter object, now a view
                start += rows
            pointers = tuple(proj.weight.data_ptr() for proj in projections)
            rows = tuple(proj.weight.shape[0] for proj in projections)
            block.__dict__[_FUSED] = _FusedQKV(buffer, pointers, rows)
            fused += 1
    return fused


def _onednn_fused(block: nn.Module) -> _FusedQKV | None:
    """The fused record when a step can use it: still fused, and all three projections plain oneDNN linears
    (so the fused GEMV equals theirs bit for bit). Checked when a ``LeanStep`` is built."""
    projections = _plain_projections(block)
    if projections is None or any(type(proj) is not OneDNNLinear for proj in projections):
        return None
    return _fused(block, projections)


@dataclass(frozen=True)
class _LayerPlan:
    """One decoder layer's modules and constants, looked up once."""

    input_norm: nn.Module
    post_norm: nn.Module
    block: nn.Module  # the attention module (transformers' attention function reads its attributes)
    projections: tuple[nn.Module, nn.Module, nn.Module]  # q, k, v
    fused: _FusedQKV | None  # q/k/v as one oneDNN GEMV (fuse_qkv), when valid at build time
    o_proj: nn.Module
    mlp: nn.Module
    mlp_parts: tuple[nn.Module, nn.Module, nn.Module, nn.Module] | None  # gate, up, down, act of a hook-free LlamaMLP
    head_dim: int
    scaling: float
    layer_idx: int


class LeanStep:
    """``backbone``'s one-position step with its submodules resolved now (module docstring).

    Raises ValueError when ``lean_step_supported(backbone)`` is false."""

    def __init__(self, backbone: nn.Module) -> None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.llama.modeling_llama import LlamaMLP, apply_rotary_pos_emb

        if not lean_step_supported(backbone):
            raise ValueError("this module is not a hook-free LLaMA stack in eval mode with SDPA attention")
        self._attention = ALL_ATTENTION_FUNCTIONS["sdpa"]
        self._rotate = apply_rotary_pos_emb
        self._rotary = backbone.rotary_emb
        self._norm = backbone.norm
        plans = []
        for layer in backbone.layers:
            block, mlp = layer.self_attn, layer.mlp
            plain_mlp = type(mlp) is LlamaMLP and not _has_hooks(mlp)
            plans.append(
                _LayerPlan(
                    input_norm=layer.input_layernorm,
                    post_norm=layer.post_attention_layernorm,
                    block=block,
                    projections=(block.q_proj, block.k_proj, block.v_proj),
                    fused=_onednn_fused(block),
                    o_proj=block.o_proj,
                    mlp=mlp,
                    mlp_parts=(mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn) if plain_mlp else None,
                    head_dim=block.head_dim,
                    scaling=block.scaling,
                    layer_idx=block.layer_idx,
                )
            )
        self._layers = tuple(plans)

    @torch.no_grad()
    def __call__(self, inputs_embeds: torch.Tensor, cache: object) -> torch.Tensor:
        """One new position (batch, 1, hidden) with ``cache`` (a transformers ``Cache``, updated in place);
        returns the final-norm hidden states (batch, 1, hidden)."""
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[1] != 1:
            raise ValueError(f"a lean step takes one position (batch, 1, hidden); got {tuple(inputs_embeds.shape)}")
        batch = inputs_embeds.shape[0]
        position_ids = (torch.arange(1, device=inputs_embeds.device) + cache.get_seq_length()).unsqueeze(0)  # (1, 1)
        cos, sin = self._rotary(inputs_embeds, position_ids=position_ids)
        hidden = inputs_embeds
        for plan in self._layers:
            normed = plan.input_norm(hidden)
            if plan.fused is not None:  # one GEMV over the fused rows, split: bit-identical to the three
                query, key, value = onednn_linear(normed, plan.fused.buffer).split(plan.fused.rows, dim=-1)
            else:
                q_proj, k_proj, v_proj = plan.projections
                query, key, value = q_proj(normed), k_proj(normed), v_proj(normed)
            head_shape = (batch, 1, -1, plan.head_dim)
            query = query.view(head_shape).transpose(1, 2)  # (batch, heads, 1, head_dim)
            key = key.view(head_shape).transpose(1, 2)  # (batch, kv_heads, 1, head_dim)
            value = value.view(head_shape).transpose(1, 2)
            query, key = self._rotate(query, key, cos, sin)
            key, value = cache.update(key, value, plan.layer_idx)  # (batch, kv_heads, past + 1, head_dim)
            attended, _ = self._attention(plan.block, query, key, value, None, dropout=0.0, scaling=plan.scaling)
            hidden = hidden + plan.o_proj(attended.reshape(batch, 1, -1).contiguous())
            normed = plan.post_norm(hidden)
            if plan.mlp_parts is not None:  # LlamaMLP.forward, unrolled
                gate, up, down, act = plan.mlp_parts
                hidden = hidden + down(act(gate(normed)) * up(normed))
            else:
                hidden = hidden + plan.mlp(normed)
        return self._norm(hidden)


def lean_step(backbone: nn.Module, inputs_embeds: torch.Tensor, cache: object) -> torch.Tensor:
    """``LeanStep(backbone)(inputs_embeds, cache)``: one position (batch, 1, hidden) through a supported
    ``LlamaModel``; returns the final-norm hidden states (batch, 1, hidden)."""
    return LeanStep(backbone)(inputs_embeds, cache)
