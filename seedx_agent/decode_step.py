"""A lean one-token step through a transformers ``LlamaModel``, bit-identical to its ``forward``.

Decoding a reply calls the LLM once per token with a single new position. ``LlamaModel.forward`` then spends
about a millisecond per step (8 layers x 1024) outside the matrix multiplies: the output-capturing and kwargs
decorators, causal-mask construction, per-layer keyword plumbing and output dataclasses. For one query
position without padding none of that changes the numbers, so ``lean_step`` walks the same submodules with
the same tensor operations in the same order (RMSNorm, q/k/v projections, rotary embedding, cache update,
transformers' own SDPA attention function, o_proj, MLP) and returns the same post-norm hidden states, bit
for bit (tests/test_decode_step.py). Submodule hooks, LoRA wrappers and quantised layers still run, because
every projection is called as a module.

``lean_step_supported`` says when the walk is exact: a LLaMA stack in eval mode with SDPA attention and no
hooks on the stack, its layers or their attention blocks (accelerate offloading, user hooks). Anything else
goes through ``forward`` (``GenerationOptions.decode_step="transformers"`` forces that too).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["lean_step", "lean_step_supported"]


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook"))


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


@torch.no_grad()
def lean_step(backbone: nn.Module, inputs_embeds: torch.Tensor, cache: object) -> torch.Tensor:
    """One new position (batch, 1, hidden) through ``backbone`` (a supported ``LlamaModel``) with ``cache``
    (a transformers ``Cache``, updated in place); returns the final-norm hidden states (batch, 1, hidden)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    if inputs_embeds.dim() != 3 or inputs_embeds.shape[1] != 1:
        raise ValueError(f"lean_step takes one position (batch, 1, hidden); got {tuple(inputs_embeds.shape)}")
    attention = ALL_ATTENTION_FUNCTIONS["sdpa"]
    batch = inputs_embeds.shape[0]
    position_ids = (torch.arange(1, device=inputs_embeds.device) + cache.get_seq_length()).unsqueeze(0)  # (1, 1)
    cos, sin = backbone.rotary_emb(inputs_embeds, position_ids=position_ids)
    hidden = inputs_embeds
    for layer in backbone.layers:
        block = layer.self_attn
        normed = layer.input_layernorm(hidden)
        head_shape = (batch, 1, -1, block.head_dim)
        query = block.q_proj(normed).view(head_shape).transpose(1, 2)  # (batch, heads, 1, head_dim)
        key = block.k_proj(normed).view(head_shape).transpose(1, 2)  # (batch, kv_heads, 1, head_dim)
        value = block.v_proj(normed).view(head_shape).transpose(1, 2)
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        key, value = cache.update(key, value, block.layer_idx)  # (batch, kv_heads, past + 1, head_dim)
        attended, _ = attention(block, query, key, value, None, dropout=0.0, scaling=block.scaling)
        hidden = hidden + block.o_proj(attended.reshape(batch, 1, -1).contiguous())
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return backbone.norm(hidden)
