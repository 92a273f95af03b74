"""The §12.4 ids/labels/masks of every sample kind, checked position by position on tiny-random."""

from __future__ import annotations

import PIL.Image
import pytest
import torch

from seedx_agent.config import SeedXConfig
from seedx_agent.errors import ConfigError, InvalidPromptError
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.pipeline.tokens import BOI, BOP, EOI, EOP, image_token
from seedx_agent.training.samples import (
    IGNORE_INDEX,
    collate,
    comprehension_example,
    edit_example,
    generation_example,
)


def square(colour: str = "red", size: tuple[int, int] = (56, 56)) -> PIL.Image.Image:
    return PIL.Image.new("RGB", size, colour)


def ids_of(tok: SeedXTokenizer, *tokens: str) -> list[int]:
    return [tok.added_tokens[t] for t in tokens]


def test_comprehension_masks_and_labels(tok: SeedXTokenizer, config: SeedXConfig) -> None:
    n = config.lvlm.num_image_tokens
    ex = comprehension_example(tok, config, ["what colour?", "red"], [square()])
    # square image -> grid 1x1 -> one <patch> tile + the <img> thumbnail
    slots = "".join(image_token(i) for i in range(n))
    # the official string, tokenised in one go with the 4.30.2 added-token splitting (an independent path)
    prompt = tok.encode(f"[INST] {BOP}{slots}{EOP}{BOI}{slots}{EOI}what colour? [/INST]\n")
    answer = tok.encode("red")
    assert ex.input_ids == [tok.bos_token_id, *prompt, *answer, tok.eos_token_id]
    # labels: -100 on BOS and the whole user turn; the answer and EOS are labelled
    assert ex.labels == [IGNORE_INDEX] * (1 + len(prompt)) + answer + [tok.eos_token_id]
    # ids_cmp_mask: exactly the placeholders strictly inside <patch>..</patch> and <img>..</img>
    placeholder_ids = set(ids_of(tok, *(image_token(i) for i in range(n))))
    assert ex.ids_cmp_mask == [t in placeholder_ids for t in ex.input_ids]
    assert sum(ex.ids_cmp_mask) == 2 * n and not any(ex.ids_gen_mask)
    assert ex.embeds_cmp_mask == [True, True] and ex.embeds_gen_mask == [False, False]
    assert ex.pixel_values.shape == (2, 3, 56, 56)


def test_comprehension_multi_turn_labels_every_answer(tok: SeedXTokenizer, config: SeedXConfig) -> None:
    ex = comprehension_example(tok, config, ["q one", "a one", "q two", "a two"], [])
    labelled = [t for t, label in zip(ex.input_ids, ex.labels) if label != IGNORE_INDEX]
    assert labelled == tok.encode("a one") + tok.encode("a two") + [tok.eos_token_id]
    second_turn = tok.encode_segments_with_mask(["\n[INST] ", "q two", " [/INST]\n"])[0]
    text = ex.input_ids
    assert any(text[i : i + len(second_turn)] == second_turn for i in range(len(text)))
    assert ex.pixel_values.shape[0] == 0 and not any(ex.ids_cmp_mask)


def test_generation_masks_and_labels(tok: SeedXTokenizer, config: SeedXConfig) -> None:
    n = config.lvlm.num_image_tokens
    ex = generation_example(tok, config, "a red square", square(size=(80, 40)))
    boi = ex.input_ids.index(tok.added_tokens[BOI])
    eoi = ex.input_ids.index(tok.added_tokens[EOI])
    assert eoi - boi == n + 1 and ex.input_ids[-1] == tok.eos_token_id
    # caption unlabelled; <img> labelled; placeholders and </img> unlabelled; EOS labelled
    assert all(label == IGNORE_INDEX for label in ex.labels[:boi])
    assert ex.labels[boi] == tok.added_tokens[BOI]
    assert ex.labels[boi + 1 : eoi + 1] == [IGNORE_INDEX] * (n + 1)
    assert ex.labels[-1] == tok.eos_token_id
    assert ex.ids_gen_mask == [boi < i < eoi for i in range(len(ex))] and not any(ex.ids_cmp_mask)
    # 1x1 any-res of the target: [tile, thumbnail]; only the thumbnail is the regression target
    assert ex.embeds_cmp_mask == [False, False] and ex.embeds_gen_mask == [False, True]


def test_pretraining_generation_prompt_has_one_boi(tok: SeedXTokenizer, config: SeedXConfig) -> None:
    ex = generation_example(tok, config, "a red square", square(), style="seed-x")
    assert ex.input_ids.count(tok.added_tokens[BOI]) == 1
    assert ex.input_ids[1 : 1 + len(tok.encode("a red square"))] == tok.encode("a red square")


def test_edit_masks(tok: SeedXTokenizer, config: SeedXConfig) -> None:
    n = config.lvlm.num_image_tokens
    ex = edit_example(tok, config, square("red"), "make it blue", square("blue"), response="Done.")
    boi_positions = [i for i, t in enumerate(ex.input_ids) if t == tok.added_tokens[BOI]]
    last = boi_positions[-1]
    assert sum(ex.ids_cmp_mask) == 2 * n  # source tile + thumbnail (edit grids 1x1)
    assert ex.ids_gen_mask == [last < i <= last + n for i in range(len(ex))]
    labelled = [t for t, label in zip(ex.input_ids, ex.labels) if label != IGNORE_INDEX]
    assert labelled == [*tok.encode("Done."), tok.added_tokens[BOI], tok.eos_token_id]
    assert ex.embeds_cmp_mask == [True, True, False, False]
    assert ex.embeds_gen_mask == [False, False, False, True]


def test_collate_pads_right_and_concatenates_crops(tok: SeedXTokenizer, config: SeedXConfig) -> None:
    short = comprehension_example(tok, config, ["q", "a"], [square()])
    long = generation_example(tok, config, "a much longer caption about a red square", square())
    batch = collate([short, long], pad_token_id=tok.pad_token_id)
    T = max(len(short), len(long))
    assert batch.input_ids.shape == (2, T)
    pad = T - len(short)
    assert batch.attention_mask[0].tolist() == [1] * len(short) + [0] * pad
    assert batch.labels[0, len(short) :].tolist() == [IGNORE_INDEX] * pad
    assert batch.input_ids[0, len(short) :].tolist() == [tok.pad_token_id] * pad
    assert batch.pixel_values.shape[0] == 4
    assert batch.embeds_cmp_mask.tolist() == [True, True, False, False]
    assert batch.embeds_gen_mask.tolist() == [False, False, False, True]
    # §5.5 order invariant: cmp positions in the tokens match the cmp crops in order
    n = config.lvlm.num_image_tokens
    assert int(batch.ids_cmp_mask.sum()) == n * int(batch.embeds_cmp_mask.sum())
    assert int(batch.ids_gen_mask.sum()) == n * int(batch.embeds_gen_mask.sum())
    assert torch.equal(batch.pixel_values[:2], short.pixel_values)


def test_bad_inputs(tok: SeedXTokenizer, config: SeedXConfig) -> None:
    with pytest.raises(InvalidPromptError, match="alternate"):
        comprehension_example(tok, config, ["only a question"], [square()])
    with pytest.raises(InvalidPromptError, match="max_length"):
        generation_example(tok, config, "a red square", square(), max_length=5)
    with pytest.raises(ConfigError, match="empty"):
        collate([])
    # user text spelling special tokens stays text: no extra image slots appear
    ex = comprehension_example(tok, config, ["<img><img_00000></img> what?", "x"], [square()])
    assert sum(ex.ids_cmp_mask) == 2 * config.lvlm.num_image_tokens
