"""GrowingLayer: in-place KV appends that equal torch.cat growth and never write into a shared view."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from seedx_agent.speed.growing_kv import MIN_EXTRA, GrowingLayer, new_kv_cache
from seedx_agent.speed.prefix_cache import PrefixKVCache, share_cache

CONFIG = LlamaConfig(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def _kv(length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 2, length, 8, generator=generator), torch.randn(1, 2, length, 8, generator=generator)


def _cat(*parts: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([p[0] for p in parts], dim=-2), torch.cat([p[1] for p in parts], dim=-2)


def _assert_holds(layer: GrowingLayer, expected: tuple[torch.Tensor, torch.Tensor]) -> None:
    assert torch.equal(layer.keys, expected[0]) and torch.equal(layer.values, expected[1])


@torch.no_grad()
def test_decoding_matches_the_concatenating_cache() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(CONFIG).eval()
    prompt = torch.randint(0, CONFIG.vocab_size, (1, 20))
    runs = {}
    for name, cache in (("cat", DynamicCache(config=CONFIG)), ("grow", new_kv_cache(CONFIG))):
        logits = model(input_ids=prompt, cache=cache, use_cache=True).logits[:, -1]
        tokens, steps = [], []
        for _ in range(MIN_EXTRA + 40):  # past the first buffer, so one re-allocation happens mid-reply
            token = logits.argmax(-1, keepdim=True)
            tokens.append(int(token))
            logits = model(input_ids=token, cache=cache, use_cache=True).logits[:, -1]
            steps.append(logits)
        runs[name] = (tokens, torch.stack(steps), cache)
    assert runs["grow"][0] == runs["cat"][0]
    torch.testing.assert_close(runs["grow"][1], runs["cat"][1], atol=1e-5, rtol=1e-5)
    grown, concatenated = runs["grow"][2], runs["cat"][2]
    assert all(isinstance(layer, GrowingLayer) for layer in grown.layers)
    assert grown.get_seq_length() == concatenated.get_seq_length() == 20 + MIN_EXTRA + 40
    for ours, theirs in zip(grown.layers, concatenated.layers, strict=True):
        torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-5, rtol=1e-5)


def test_one_position_per_step_and_few_reallocations() -> None:
    layer, parts, capacities = GrowingLayer(), [], []
    for step in range(2000):
        part = _kv(1, step)
        layer.update(*part)
        parts.append(part)
        if not capacities or capacities[-1] != layer.capacity:
            capacities.append(layer.capacity)
        assert layer.capacity >= layer.get_seq_length() == step + 1
    _assert_holds(layer, _cat(*parts))
    # MIN_EXTRA steps, then an eighth at a time: 15 allocations for 2000 tokens (torch.cat: 2000)
    assert len(capacities) <= 16 and capacities[:3] == [1 + MIN_EXTRA, 2 + 2 * MIN_EXTRA, 3 + 3 * MIN_EXTRA]
    assert layer.capacity - 2000 <= max(MIN_EXTRA, 2000 // 8) + 1


def test_snapshots_do_not_see_the_owner_or_each_other() -> None:
    cache = new_kv_cache(CONFIG)
    first = _kv(5, 1)
    for layer in cache.layers:
        layer.update(*first)
    snapshot = share_cache(cache)
    owner_more, snapshot_more = _kv(3, 2), _kv(4, 3)
    cache.layers[0].update(*owner_more)  # writes past 5 in the owner's buffer
    _assert_holds(snapshot.layers[0], first)
    snapshot.layers[0].update(*snapshot_more)  # the copy owns no buffer: it re-allocates
    _assert_holds(cache.layers[0], _cat(first, owner_more))
    _assert_holds(snapshot.layers[0], _cat(first, snapshot_more))
    assert snapshot.layers[0]._key_buffer.data_ptr() != cache.layers[0]._key_buffer.data_ptr()


def test_a_cropped_owner_reallocates_instead_of_overwriting_a_snapshot() -> None:
    cache = new_kv_cache(CONFIG)
    first = _kv(10, 4)
    cache.layers[0].update(*first)
    snapshot = share_cache(cache)
    cache.crop(-4)
    replacement = _kv(4, 5)
    cache.layers[0].update(*replacement)
    _assert_holds(snapshot.layers[0], first)
    _assert_holds(cache.layers[0], _cat((first[0][..., :6, :], first[1][..., :6, :]), replacement))


def test_prefix_cache_stores_compact_private_tensors() -> None:
    cache = new_kv_cache(CONFIG)
    first = _kv(7, 6)
    for layer in cache.layers:
        layer.update(*first)
    store = PrefixKVCache()
    assert store.put(("key",), cache)
    stored = store._entries[("key",)][0]
    for layer, original in zip(stored.layers, cache.layers, strict=True):
        assert layer.keys.is_contiguous() and layer.keys.shape[-2] == 7
        assert layer.keys.untyped_storage().nbytes() == layer.keys.numel() * layer.keys.element_size()
        assert layer.keys.data_ptr() != original.keys.data_ptr()
        _assert_holds(layer, first)
    assert store.stats.bytes == 2 * 2 * first[0].numel() * 4  # two layers, keys + values, fp32


@pytest.mark.parametrize("reset", ["reset", "reorder"])
def test_replaced_tensors_are_not_written_through(reset: str) -> None:
    layer = GrowingLayer()
    first = _kv(6, 7)
    layer.update(*first)
    if reset == "reset":
        layer.reset()
        expected = _kv(2, 8)
        layer.update(*expected)
    else:
        layer.reorder_cache(torch.tensor([0]))
        more = _kv(2, 8)
        layer.update(*more)
        expected = _cat(first, more)
    _assert_holds(layer, expected)
    assert layer.keys.data_ptr() == layer._key_buffer.data_ptr()
