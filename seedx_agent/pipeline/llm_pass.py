"""The LLM pass of every ability: embed the prompt with its images spliced in, prefill, decode.

The prompt is split after its last image placeholder; the KV of that prefix is what ``speed.prefix_cache`` stores
and reuses on the next question about the same images. The uncached path splits at the same place, so both feed
identical tensors and agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from seedx_agent.pipeline.anyres import AnyResCrops
from seedx_agent.pipeline.decoding import DecodeOutput, GenerationOptions, LogitsProcessor, decode
from seedx_agent.pipeline.lvlm import SeedXLVLM
from seedx_agent.pipeline.tokens import TokenIds
from seedx_agent.speed.growing_kv import new_kv_cache
from seedx_agent.speed.prefix_cache import PrefixKVCache, crops_fingerprint, weights_version

__all__ = ["prefill_and_decode"]


@torch.no_grad()
def prefill_and_decode(
    lvlm: SeedXLVLM,
    ids: TokenIds,
    input_ids: Sequence[int],
    cmp_mask: Sequence[bool],
    crops: Sequence[AnyResCrops],
    options: GenerationOptions,
    *,
    encode_crops: Callable[[torch.Tensor], torch.Tensor],
    vision: nn.Module,
    prefix_cache: PrefixKVCache,
    on_token: Callable[[int], None] | None = None,
    logits_processor: LogitsProcessor | None = None,
) -> DecodeOutput:
    """Decode the answer to ``input_ids`` (whose ``cmp_mask`` marks image placeholders) with ``crops``' features."""
    device = lvlm.device
    ids_tensor = torch.tensor([input_ids], device=device)
    mask_tensor = torch.tensor([cmp_mask], device=device)

    def embed_prompt() -> torch.Tensor:  # (1, seq, hidden) with the crops' features spliced in
        image_embeds = None
        if crops:
            pixel_values = torch.cat([c.pixel_values for c in crops])  # (total_crops, 3, S, S)
            positions = torch.cat([c.patch_positions for c in crops])  # (total_crops, 2)
            image_embeds = lvlm.embed_images(encode_crops(pixel_values), positions)
        return lvlm.inputs_embeds(ids_tensor, image_embeds, mask_tensor)

    if not crops or not any(cmp_mask):  # nothing to cache (a count mismatch raises in embed_prompt)
        embeds = embed_prompt()
        last_token = input_ids[-1]
        return decode(
            lvlm,
            ids,
            inputs_embeds=embeds,
            last_prompt_token=last_token,
            options=options,
            on_token=on_token,
            logits_processor=logits_processor,
        )
    # Split after the last image placeholder: that prefix's KV is what the prefix cache stores. The
    # uncached path splits at the same place, so both feed identical tensors and agree bit for bit.

    split = max(i for i, flag in enumerate(cmp_mask) if flag) + 1
    cache_store = prefix_cache
    use_cache = options.prefix_cache and cache_store.active and split < len(input_ids)
    split = min(split, len(input_ids) - 1)  # decode needs at least one prompt token to run
    key = None
    kv = None
    if use_cache:
        identity = (id(lvlm), str(lvlm.device), str(lvlm.dtype))
        # The prefix went through the ViT and this LLM: a change to either makes its KV stale.
        version = weights_version([vision, lvlm], content=cache_store.content_check)
        cache_store.sync_weights(identity, version)
        key = cache_store.make_key(identity, crops_fingerprint(crops), input_ids[:split], version)
        kv = cache_store.get(key)
    if kv is None:
        embeds = embed_prompt()
        kv = new_kv_cache(lvlm.llm.config)
        lvlm.backbone(inputs_embeds=embeds[:, :split], cache=kv, use_cache=True)
        if key is not None:
            cache_store.put(key, kv)
        rest = embeds[:, split:]
    else:  # the suffix holds no image placeholders: plain token embeddings
        rest = lvlm.inputs_embeds(ids_tensor[:, split:])
    return decode(
        lvlm,
        ids,
        inputs_embeds=rest,
        last_prompt_token=input_ids[-1],
        options=options,
        cache=kv,
        on_token=on_token,
        logits_processor=logits_processor,
    )
