"""Placement of loaded components: dtype and device per group, and optional bitsandbytes quantisation of the
LLM (imported only when asked for)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from seedx_agent.errors import (
    ConfigError,
    DependencyMissingError,
)
from seedx_agent.pipeline.components import SeedXComponents
from seedx_agent.weights.io import _vae_keeps_fp32

logger = logging.getLogger(__name__)

# =================================================================================================
# Placement and quantisation
# =================================================================================================
PLACEMENT_KEYS: tuple[str, ...] = ("vision", "llm", "detokenizer")


def _cast_floating(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast floating parameters and persistent buffers; non-persistent buffers (RoPE frequencies) stay fp32."""
    for submodule in module.modules():
        for param in submodule._parameters.values():
            if param is not None and param.is_floating_point() and param.dtype != dtype:
                with torch.no_grad():
                    param.data = param.data.to(dtype)
        for name, buffer in submodule._buffers.items():
            if buffer is None or name in submodule._non_persistent_buffers_set:
                continue
            if buffer.is_floating_point() and buffer.dtype != dtype:
                submodule._buffers[name] = buffer.to(dtype)


def _groups(parts: SeedXComponents) -> Iterator[tuple[str, nn.Module]]:
    yield "vision", parts.vision
    for lvlm in parts.lvlms.values():
        yield "llm", lvlm
    for detokenizer in parts.detokenizers.values():
        yield "detokenizer", detokenizer


def place(
    parts: SeedXComponents,
    *,
    device_map: Mapping[str, str | torch.device] | None = None,
    dtype: torch.dtype | None = None,
) -> SeedXComponents:
    """Move each component group (``vision``, ``llm``, ``detokenizer``) to its device and cast it.

    Groups absent from ``device_map`` stay where they are. The VAE stays float32 when its config sets
    ``force_upcast`` (SDXL's VAE overflows in fp16); a quantised LLM keeps its quantised layers.
    """
    device_map = dict(device_map or {})
    unknown = sorted(set(device_map) - set(PLACEMENT_KEYS))
    if unknown:
        raise ConfigError(f"device_map has unknown keys {unknown}; use {list(PLACEMENT_KEYS)}")
    if dtype is not None and not dtype.is_floating_point:
        raise ConfigError(f"dtype must be a floating dtype such as torch.float16, got {dtype}")
    for group, module in _groups(parts):
        device = device_map.get(group)
        quantised = group == "llm" and getattr(module, "quantized_bits", None) is not None
        targets: list[nn.Module] = [module]
        if quantised:  # bitsandbytes layers must not be cast or moved off their GPU
            targets = [child for name, child in module.named_children() if name != "llm"]
            if device is not None and torch.device(device) != module.llm.device:
                raise ConfigError(f"the LLM is quantised on {module.llm.device}; it cannot move to {device}")
        for target in targets:
            if device is not None:
                nn.Module.to(target, device=device)
            if dtype is not None:
                _cast_floating(target, dtype)
        if quantised:
            if device is not None:
                module.patch_pos_embed.data = module.patch_pos_embed.data.to(device)
            if dtype is not None:
                module.patch_pos_embed.data = module.patch_pos_embed.data.to(dtype)
        vae = getattr(module, "vae", None) if group == "detokenizer" else None
        if vae is not None and dtype is not None and _vae_keeps_fp32(dict(vae.config)):
            _cast_floating(vae, torch.float32)
    return parts


def quantize_llm(lvlm: nn.Module, bits: int) -> nn.Module:
    """Quantise the LLM's decoder-layer Linear weights to 8 bit (LLM.int8) or 4 bit (NF4) with bitsandbytes.

    Embeddings, ``lm_head``, norms, resamplers and the patch table stay unquantised: the hidden states
    feed the image regression head (§14.2). Needs ``pip install bitsandbytes`` and a CUDA GPU.
    """
    if bits not in (4, 8):
        raise ConfigError(f"bits must be 8 or 4, got {bits!r}")
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise DependencyMissingError(
            f"{bits}-bit quantisation needs bitsandbytes: pip install bitsandbytes (it also needs a CUDA GPU)"
        ) from exc
    if not torch.cuda.is_available():
        raise DependencyMissingError("bitsandbytes quantisation needs a CUDA GPU; none is visible to torch")
    if getattr(lvlm, "quantized_bits", None) is not None:
        raise ConfigError(f"the LLM is already quantised to {lvlm.quantized_bits} bits")
    current = lvlm.llm.device
    device = current if current.type == "cuda" else torch.device("cuda")
    compute_dtype = lvlm.dtype if lvlm.dtype in (torch.float16, torch.bfloat16) else torch.float16
    targets = [
        (parent, name, child)
        for parent in lvlm.llm.model.layers.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]
    for parent, name, linear in targets:
        weight = linear.weight.data.to(device="cpu", dtype=compute_dtype)
        has_bias = linear.bias is not None
        if bits == 8:
            layer = bnb.nn.Linear8bitLt(
                linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False, threshold=6.0
            )
            layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(
                linear.in_features, linear.out_features, bias=has_bias, compute_dtype=compute_dtype, quant_type="nf4"
            )
            layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
        if has_bias:
            layer.bias = nn.Parameter(linear.bias.data.to(device="cpu", dtype=compute_dtype), requires_grad=False)
        setattr(parent, name, layer.to(device))  # bitsandbytes quantises on the move to the GPU
    # Embeddings, norms, lm_head, resamplers and the patch table keep their dtype and join the GPU
    # (the quantised layers are already there; bitsandbytes parameters accept the no-op move).
    nn.Module.to(lvlm, device=device)
    lvlm.quantized_bits = bits
    logger.info("quantised %d LLM linear layers to %d bits on %s", len(targets), bits, device)
    return lvlm


def _parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(parts: SeedXComponents) -> dict[str, dict[str, Any]]:
    """Per component: number of state-dict keys, parameters and the dtypes present (for logs and examples)."""
    summary = {}
    for name, module in parts.modules():
        state = module.state_dict()
        summary[name] = {
            "keys": len(state),
            "parameters": _parameter_count(module),
            "dtypes": sorted({str(t.dtype).replace("torch.", "") for t in state.values()}),
            "megabytes": round(sum(t.numel() * t.element_size() for t in state.values()) / 2**20, 2),
        }
    return summary
