"""Prefix KV cache: cached answers are bit-identical to uncached ones; LRU by bytes; on/off; keys."""

import numpy as np
import PIL.Image
import pytest
import torch

from seedx_agent.errors import ConfigError
from seedx_agent.model import ChatMessage, SeedX
from seedx_agent.pipeline import prompts
from seedx_agent.pipeline.anyres import preprocess
from seedx_agent.pipeline.decoding import GenerationOptions
from seedx_agent.speed.prefix_cache import PrefixKVCache, cache_nbytes

QUESTIONS = ("What color is the square?", "Where is the square?", "Describe the picture.")


@pytest.fixture(scope="module")
def model():
    return SeedX.from_pretrained("tiny-random", variants=("seed-x-i",))


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray(rng.integers(0, 256, (60, 130, 3), dtype=np.uint8))  # 3x1 grid -> 4 crops


def _run(model, image, question, options):
    """One comprehension turn through ``_run_llm``; returns its DecodeOutput."""
    crops = [preprocess(image, model.config.vision, model.config.anyres.grids)]
    prompt = prompts.comprehension_prompt("seed-x-i", [crops[0].num_crops - 1], question, 4)
    return model._run_llm(model.parts.lvlms["seed-x-i"], prompt, crops, options)


def _kv(cache):
    return [(layer.keys, layer.values) for layer in cache.layers]


def test_cached_questions_equal_uncached_bit_for_bit(model, scene):
    model.prefix_cache.clear()
    cached_opts = GenerationOptions(max_new_tokens=10)
    plain_opts = GenerationOptions(max_new_tokens=10, prefix_cache=False)
    hits = model.prefix_cache.stats.hits
    for index, question in enumerate(QUESTIONS * 2):
        cached = _run(model, scene, question, cached_opts)
        plain = _run(model, scene, question, plain_opts)
        assert cached.token_ids == plain.token_ids
        for (k1, v1), (k2, v2) in zip(_kv(cached.cache), _kv(plain.cache), strict=True):
            assert torch.equal(k1, k2) and torch.equal(v1, v2)  # every KV entry, prompt and answer
        assert model.prefix_cache.stats.hits == hits + index  # the first question fills the cache
    assert len(model.prefix_cache) == 1  # one image prefix, whatever the question


def test_stored_entry_is_not_changed_by_decoding(model, scene):
    model.prefix_cache.clear()
    first = _run(model, scene, QUESTIONS[0], GenerationOptions(max_new_tokens=6))
    ((entry, size),) = model.prefix_cache._entries.values()
    stored = [(k.clone(), v.clone()) for k, v in _kv(entry)]
    assert entry.get_seq_length() < first.cache.get_seq_length()  # decoding grew its own copy only
    _run(model, scene, QUESTIONS[1], GenerationOptions(max_new_tokens=6))
    assert size == cache_nbytes(entry)
    for (k1, v1), (k2, v2) in zip(_kv(entry), stored, strict=True):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)


def test_other_image_or_pixel_change_misses(model, scene):
    model.prefix_cache.clear()
    opts = GenerationOptions(max_new_tokens=4)
    _run(model, scene, QUESTIONS[0], opts)
    changed = scene.copy()
    changed.putpixel((5, 5), (0, 0, 0) if scene.getpixel((5, 5)) != (0, 0, 0) else (1, 1, 1))
    misses = model.prefix_cache.stats.misses
    out = _run(model, changed, QUESTIONS[0], opts)
    assert model.prefix_cache.stats.misses == misses + 1 and len(model.prefix_cache) == 2
    assert (
        out.token_ids == _run(model, changed, QUESTIONS[0], opts.model_copy(update={"prefix_cache": False})).token_ids
    )


def test_chat_second_turn_reuses_the_image_prefix(model, scene):
    model.prefix_cache.clear()
    opts = GenerationOptions(max_new_tokens=6)
    first = model.chat([ChatMessage("user", "What is this?", [scene])], options=opts)
    history = [
        ChatMessage("user", "What is this?", [scene]),
        ChatMessage("assistant", first.raw_text or "a picture"),
        ChatMessage("user", "And the colour?"),
    ]
    hits = model.prefix_cache.stats.hits
    second = model.chat(history, options=opts)
    assert model.prefix_cache.stats.hits == hits + 1
    uncached = model.chat(history, options=opts.model_copy(update={"prefix_cache": False}))
    assert second.raw_text == uncached.raw_text


def test_comprehend_answers_equal_with_cache_off(model, scene):
    opts = GenerationOptions(max_new_tokens=8)
    model.prefix_cache.enabled = False
    try:
        off = [model.comprehend(scene, q, options=opts).token_ids for q in QUESTIONS]
    finally:
        model.prefix_cache.enabled = True
    on = [model.comprehend(scene, q, options=opts).token_ids for q in QUESTIONS]
    assert on == off


def _fake_cache(nbytes: int):
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.update(torch.zeros(1, 1, nbytes // 8, 1), torch.zeros(1, 1, nbytes // 8, 1), 0)  # fp32 keys + values
    return cache


def test_lru_evicts_by_bytes_and_can_be_turned_off():
    store = PrefixKVCache(max_bytes=1000)
    for name in ("a", "b", "c"):
        assert store.put(name, _fake_cache(400))
    assert "a" not in store and "b" in store and "c" in store  # 3 x 400 > 1000: the oldest went
    assert store.get("b") is not None  # refresh b: c is now the oldest
    store.put("d", _fake_cache(400))
    assert "c" not in store and {"b", "d"} <= {k for k in ("b", "c", "d") if k in store}
    assert store.stats.bytes == 800 and store.stats.evictions == 2
    assert not store.put("huge", _fake_cache(4000))  # larger than the whole budget: not kept
    store.max_bytes = 500  # shrinking evicts at once
    assert len(store) == 1 and store.stats.bytes == 400
    store.max_bytes = 0
    assert not store.active and len(store) == 0 and store.get("d") is None
    assert not store.put("e", _fake_cache(8))


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1GB"])
def test_bad_max_bytes_raises(bad):
    with pytest.raises(ConfigError, match="max_bytes"):
        PrefixKVCache(max_bytes=bad)


def test_content_hash_tracks_pixels_and_grid(scene):
    from seedx_agent.config import SeedXConfig

    vision = SeedXConfig.from_preset("tiny-random").vision
    grids = ("1x1", "2x1", "3x1")
    a = preprocess(scene, vision, grids).content_hash
    assert a == preprocess(scene.copy(), vision, grids).content_hash
    assert a != preprocess(scene, vision, ("1x1",)).content_hash
    assert a != preprocess(scene.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT), vision, grids).content_hash


# -- weights versions (issue 23, finding 4) ------------------------------------------------------------
V_PROJ = "llm.model.layers.0.self_attn.v_proj.weight"


def _change_weights(model, how):
    """Change one weight in place, the way ``how`` names; returns nothing (the model is modified)."""
    lvlm = model.parts.lvlms["seed-x-i"]
    param = lvlm.get_parameter(V_PROJ)
    if how == "load_state_dict":
        lvlm.load_state_dict({V_PROJ: param.detach() * -2.0 + 0.05}, strict=False)
    elif how == "data.add_":  # autograd's version counter does not see writes through .data
        param.data.add_(0.05)
    elif how == "no_grad add_":
        with torch.no_grad():
            param.add_(0.05)
    elif how == "vision data.mul_":
        model.parts.vision.conv1.weight.data.mul_(-1.5)
    elif how == "one element":  # the smallest change: one element by one ulp
        flat = param.data.view(-1)
        flat[7] = torch.nextafter(flat[7], torch.tensor(float("inf")))
    elif how == "replaced":  # a new tensor object (e.g. load_state_dict(assign=True), a LoRA merge)
        param.data = param.data * 0.5
    else:
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["load_state_dict", "data.add_", "no_grad add_", "vision data.mul_", "one element", "replaced"]
)
def test_changed_weights_never_reuse_a_stale_prefix(scene, how):
    model = SeedX.from_pretrained("tiny-random", variants=("seed-x-i",))  # its own: the weights get changed
    opts = GenerationOptions(max_new_tokens=10)
    before = _run(model, scene, QUESTIONS[0], opts)
    assert len(model.prefix_cache) == 1
    _change_weights(model, how)
    hits = model.prefix_cache.stats.hits
    after = _run(model, scene, QUESTIONS[0], opts)
    plain = _run(model, scene, QUESTIONS[0], opts.model_copy(update={"prefix_cache": False}))
    assert model.prefix_cache.stats.hits == hits  # not served from the old entry...
    assert model.prefix_cache.stats.invalidations == 1 and len(model.prefix_cache) == 1  # ...which was dropped
    assert after.token_ids == plain.token_ids
    for (k1, v1), (k2, v2) in zip(_kv(after.cache), _kv(plain.cache), strict=True):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)  # bit for bit the uncached answer
    if how != "one element":  # a stale prefix would have been visibly different
        assert not all(torch.equal(v1, v2) for (_, v1), (_, v2) in zip(_kv(before.cache), _kv(after.cache)))
    again = _run(model, scene, QUESTIONS[1], opts)  # unchanged since: the new entry is reused
    assert model.prefix_cache.stats.hits == hits + 1 and again.token_ids


def test_comprehend_after_load_state_dict_equals_an_uncached_answer(scene):
    model = SeedX.from_pretrained("tiny-random", variants=("seed-x-i",))
    opts = GenerationOptions(max_new_tokens=8)
    first = model.comprehend(scene, QUESTIONS[0], options=opts)
    other = SeedX.from_pretrained("tiny-random", variants=("seed-x-i",), seed=1)  # e.g. a fine-tuned copy
    model.parts.lvlms["seed-x-i"].load_state_dict(other.parts.lvlms["seed-x-i"].state_dict())
    model.parts.vision.load_state_dict(other.parts.vision.state_dict())
    cached = model.comprehend(scene, QUESTIONS[0], options=opts)
    uncached = model.comprehend(scene, QUESTIONS[0], options=opts.model_copy(update={"prefix_cache": False}))
    assert cached.token_ids == uncached.token_ids == other.comprehend(scene, QUESTIONS[0], options=opts).token_ids
    assert first.token_ids != cached.token_ids  # the change matters, so stale reuse would show


def test_weights_version_and_invalidate_caches(scene):
    from seedx_agent.speed.prefix_cache import weights_version

    model = SeedX.from_pretrained("tiny-random", variants=("seed-x-i",))
    version = model.weights_version()
    assert version == model.weights_version() == weights_version([model.parts.vision, model.parts.lvlms["seed-x-i"]])
    negative = model.negative_features(pooled=False).clone()
    model.parts.vision.ln_pre.bias.data.add_(0.5)  # the CFG negative (zero image through the ViT) is stale now
    assert model.weights_version() != version
    assert not torch.equal(model.negative_features(pooled=False), negative)
    size = model.config.vision.image_size
    assert torch.equal(model.negative_features(pooled=False), model.encode_crops(torch.zeros(1, 3, size, size)))
    model.comprehend(scene, QUESTIONS[0], options=GenerationOptions(max_new_tokens=2))
    assert len(model.prefix_cache) == 1 and model._negative_cache
    model.invalidate_caches()
    assert len(model.prefix_cache) == 0 and not model._negative_cache
    store = PrefixKVCache(content_check=False)
    assert store.sync_weights("m", "v1") == 0
    store.put(store.make_key("m", "img", [1, 2], "v1"), _fake_cache(64))
    store.put(store.make_key("n", "img", [1, 2], "v1"), _fake_cache(64))
    assert store.sync_weights("m", "v1") == 0 and store.sync_weights("m", "v2") == 1
    assert len(store) == 1 and store.stats.invalidations == 1 and store.stats.bytes == 64
