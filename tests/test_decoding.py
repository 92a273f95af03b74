"""KV-cached decoding: one-forward image blocks, masks, sampling, forcing."""

import pytest
import torch

from seedx_agent.pipeline.decoding import (
    ComparisonSwitches,
    GenerationOptions,
    apply_placeholder_mask,
    decode,
    forced_tokens,
    sample_next_token,
)


@pytest.fixture(scope="module")
def setup(tiny_lvlm):
    return tiny_lvlm


def _embeds(lvlm, ids):
    return lvlm.inputs_embeds(torch.tensor([ids]))


def test_one_forward_image_block_equals_token_by_token(setup):
    lvlm, ids, tok = setup
    prompt = tok.encode("a red circle<img>", add_bos=True)
    runs = {}
    for mode in ("one_forward", "per_token"):
        opts = GenerationOptions(max_new_tokens=12, compare=ComparisonSwitches(image_block_mode=mode))
        runs[mode] = decode(lvlm, ids, inputs_embeds=_embeds(lvlm, prompt), last_prompt_token=prompt[-1], options=opts)
    fast, slow = runs["one_forward"], runs["per_token"]
    assert fast.token_ids == slow.token_ids
    assert fast.token_ids[: len(ids.image) + 1] == [*ids.image, ids.eoi]
    assert len(fast.image_hidden_states) == 1
    assert fast.image_hidden_states[0].shape == (len(ids.image), lvlm.llm_config.hidden_size)
    torch.testing.assert_close(fast.image_hidden_states[0], slow.image_hidden_states[0], atol=1e-5, rtol=0)


def test_image_states_equal_a_full_teacher_forced_pass(setup):
    # The features are the post-norm final-layer states whose inputs were the placeholders (§6.2).
    lvlm, ids, tok = setup
    prompt = tok.encode("a blue square<img>", add_bos=True)
    out = decode(
        lvlm,
        ids,
        inputs_embeds=_embeds(lvlm, prompt),
        last_prompt_token=prompt[-1],
        options=GenerationOptions(max_new_tokens=len(ids.image) + 1),
    )
    full = torch.tensor([prompt + list(ids.image)])
    with torch.no_grad():
        hidden = lvlm.llm.model(input_ids=full).last_hidden_state[0, len(prompt) :]
    torch.testing.assert_close(out.image_hidden_states[0], hidden, atol=1e-5, rtol=0)


class _ConstantHead(torch.nn.Module):
    """An LM head that always prefers one token: lets a random model open several images."""

    def __init__(self, vocab: int, favourite: int) -> None:
        super().__init__()
        self.vocab, self.favourite = vocab, favourite

    def forward(self, hidden):
        logits = torch.zeros(*hidden.shape[:-1], self.vocab)
        logits[..., self.favourite] = 5.0
        return logits


def test_several_images_per_answer(setup):
    lvlm, ids, tok = setup
    original = lvlm.llm.lm_head
    lvlm.llm.lm_head = _ConstantHead(lvlm.llm_config.vocab_size, ids.boi)
    try:
        prompt = tok.encode("two pictures", add_bos=True)
        n = len(ids.image) + 2
        out = decode(
            lvlm,
            ids,
            inputs_embeds=_embeds(lvlm, prompt),
            last_prompt_token=prompt[-1],
            options=GenerationOptions(max_new_tokens=2 * n),
        )
    finally:
        lvlm.llm.lm_head = original
    assert len(out.image_hidden_states) == 2
    assert out.token_ids == [ids.boi, *ids.image, ids.eoi] * 2


def test_require_image_replaces_eos(setup):
    lvlm, ids, tok = setup
    original = lvlm.llm.lm_head
    lvlm.llm.lm_head = _ConstantHead(lvlm.llm_config.vocab_size, ids.eos)
    try:
        prompt = tok.encode("a cat", add_bos=True)
        plain = decode(
            lvlm,
            ids,
            inputs_embeds=_embeds(lvlm, prompt),
            last_prompt_token=prompt[-1],
            options=GenerationOptions(max_new_tokens=20),
        )
        forced = decode(
            lvlm,
            ids,
            inputs_embeds=_embeds(lvlm, prompt),
            last_prompt_token=prompt[-1],
            options=GenerationOptions(max_new_tokens=20, require_image=True),
        )
    finally:
        lvlm.llm.lm_head = original
    assert plain.token_ids == [ids.eos] and plain.finish_reason == "eos" and not plain.image_hidden_states
    assert forced.token_ids[0] == ids.boi and len(forced.image_hidden_states) == 1
    assert forced.token_ids[-1] == ids.eos


def test_placeholder_masks(setup):
    _, ids, _ = setup
    logits = torch.full((842,), -3.0)
    ours = apply_placeholder_mask(logits, ids, "neg_inf")
    official = apply_placeholder_mask(logits, ids, "official_zero")
    assert torch.isinf(ours[list(ids.image_all)]).all() and torch.isinf(ours[ids.eoi])
    assert (official[list(ids.image)] == 0.0).all() and official[ids.eoi] == 0.0
    # the official 0.0 "mask" lets a placeholder win when every real logit is negative
    assert int(torch.argmax(official)) in set(ids.image) | {ids.eoi}
    assert int(torch.argmax(ours)) not in set(ids.image_all) | {ids.eoi}
    assert ours[ids.boi] == -3.0  # <img> itself is never suppressed


def test_sampling_really_applies_temperature_top_k_top_p():
    logits = torch.tensor([0.0, torch.log(torch.tensor(3.0)), -20.0])
    greedy = GenerationOptions()
    assert sample_next_token(logits, greedy, None) == 1
    gen = torch.Generator().manual_seed(0)
    draws = [sample_next_token(logits, GenerationOptions(do_sample=True), gen) for _ in range(4000)]
    assert abs(draws.count(1) / len(draws) - 0.75) < 0.03  # softmax([0, log 3]) = (0.25, 0.75)
    hot = [sample_next_token(logits, GenerationOptions(do_sample=True, temperature=100.0), gen) for _ in range(3000)]
    assert hot.count(2) > 500  # high temperature flattens the distribution
    top_k = [sample_next_token(logits, GenerationOptions(do_sample=True, top_k=1), gen) for _ in range(200)]
    assert set(top_k) == {1}
    top_p = [sample_next_token(logits, GenerationOptions(do_sample=True, top_p=0.5), gen) for _ in range(200)]
    assert set(top_p) == {1}


def test_sampled_decoding_is_seeded(setup):
    lvlm, ids, tok = setup
    prompt = tok.encode("tell me", add_bos=True)

    def run(seed):
        opts = GenerationOptions(max_new_tokens=8, do_sample=True, temperature=2.0, seed=seed)
        return decode(
            lvlm, ids, inputs_embeds=_embeds(lvlm, prompt), last_prompt_token=prompt[-1], options=opts
        ).token_ids

    assert run(1) == run(1)
    assert run(1) != run(2) or run(3) != run(1)


def test_options_are_validated():
    with pytest.raises(ValueError):
        GenerationOptions(temperature=0)
    with pytest.raises(ValueError):
        GenerationOptions(top_p=1.5)
    with pytest.raises(ValueError):
        GenerationOptions(bogus=1)


class _NegativeHead(torch.nn.Module):
    """An LM head whose every logit is negative: the official 0.0 "mask" then lets a placeholder win."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, hidden):
        return torch.full((*hidden.shape[:-1], self.vocab), -1.0)


def _stop_after_an_image(ids):
    """A logits processor that picks EOS once a ``</img>`` was generated (so decoding can end)."""

    def process(generated, logits):
        if ids.eoi in generated:
            logits = logits.clone()
            logits[ids.eos] = 1.0
        return logits

    return process


def _decode_with_head(lvlm, ids, tok, head, options, logits_processor=None):
    original = lvlm.llm.lm_head
    lvlm.llm.lm_head = head
    try:
        prompt = tok.encode("a picture", add_bos=True)
        return prompt, decode(
            lvlm,
            ids,
            inputs_embeds=_embeds(lvlm, prompt),
            last_prompt_token=prompt[-1],
            options=options,
            logits_processor=logits_processor,
        )
    finally:
        lvlm.llm.lm_head = original


def test_forced_tokens_follow_the_official_rule(setup):
    _, ids, _ = setup
    block = (*ids.image, ids.eoi)
    for mode in ("neg_inf", "official_zero"):
        assert forced_tokens(ids.boi, ids, mode) == block
        assert forced_tokens(ids.eoi, ids, mode) == () and forced_tokens(ids.eos, ids, mode) == ()
    # official: any of <img>, <img_00000>..<img_{N-1}> forces its successor, up to </img>
    assert forced_tokens(ids.image[0], ids, "official_zero") == block[1:]
    assert forced_tokens(ids.image[-1], ids, "official_zero") == (ids.eoi,)
    assert forced_tokens(ids.image[0], ids, "neg_inf") == ()  # our mask never lets a placeholder out
    assert forced_tokens(ids.image_all[len(ids.image)], ids, "official_zero") == ()  # unused slots: no rule


@pytest.mark.parametrize("block_mode", ["one_forward", "per_token"])
def test_official_mode_completes_a_block_opened_by_a_placeholder(setup, block_mode):
    # Every ordinary logit negative: under the official 0.0 "mask" <img_00000> (the lowest-id zero) wins.
    lvlm, ids, tok = setup
    vocab, n = lvlm.llm_config.vocab_size, len(ids.image)
    assert int(torch.argmax(apply_placeholder_mask(torch.full((vocab,), -1.0), ids, "official_zero"))) == ids.image[0]
    options = GenerationOptions(
        max_new_tokens=3 * (n + 2),
        compare=ComparisonSwitches(placeholder_mask="official_zero", image_block_mode=block_mode),
    )
    prompt, out = _decode_with_head(lvlm, ids, tok, _NegativeHead(vocab), options, _stop_after_an_image(ids))
    # a complete, well-formed run of placeholders and </img>, then the processor's EOS ends decoding
    assert out.token_ids == [*ids.image, ids.eoi, ids.eos] and out.finish_reason == "eos"
    # the official generate keeps the 64 states before </img>: those whose inputs were the placeholders
    assert len(out.image_hidden_states) == 1
    with torch.no_grad():
        full = torch.tensor([prompt + list(ids.image)])
        expected = lvlm.llm.model(input_ids=full).last_hidden_state[0, len(prompt) :]
    torch.testing.assert_close(out.image_hidden_states[0], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("block_mode", ["one_forward", "per_token"])
def test_official_mode_completes_a_run_from_a_later_placeholder(setup, block_mode):
    lvlm, ids, tok = setup
    vocab = lvlm.llm_config.vocab_size
    stop = _stop_after_an_image(ids)

    def start_mid_run(generated, logits):  # the model "emits" <img_00002> first
        logits = stop(generated, logits)
        if not generated:
            logits = logits.clone()
            logits[ids.image[2]] = 1.0
        return logits

    options = GenerationOptions(
        max_new_tokens=20, compare=ComparisonSwitches(placeholder_mask="official_zero", image_block_mode=block_mode)
    )
    _, out = _decode_with_head(lvlm, ids, tok, _NegativeHead(vocab), options, start_mid_run)
    assert out.token_ids == [*ids.image[2:], ids.eoi, ids.eos] and out.finish_reason == "eos"
    assert out.image_hidden_states == []  # not a whole run: no image features (documented deviation)


def test_default_mode_never_emits_a_placeholder_with_negative_logits(setup):
    lvlm, ids, tok = setup
    options = GenerationOptions(max_new_tokens=10)
    _, out = _decode_with_head(lvlm, ids, tok, _NegativeHead(lvlm.llm_config.vocab_size), options)
    assert not set(out.token_ids) & (set(ids.image_all) | {ids.eoi})
    assert out.finish_reason == "length" and not out.image_hidden_states
