"""KV-cached decoding: one-forward image blocks, masks, sampling, forcing."""

import pytest
import torch

from seedx_agent.decoding import GenerationOptions, apply_placeholder_mask, decode, sample_next_token


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
        opts = GenerationOptions(max_new_tokens=12, image_block_mode=mode)
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
