"""The tokenizer reproduces transformers-4.30.2 slow-LlamaTokenizer semantics (FIELD-NOTES trap)."""

import json

import pytest

from seedx_agent.errors import CheckpointError, InvalidPromptError
from seedx_agent.pipeline import prompts
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.pipeline.tokens import ADDED_TOKENS, BOI, EOI, Special, TokenIds, image_block


@pytest.fixture(scope="module")
def tok():
    return SeedXTokenizer.tiny()


def test_vocab_and_special_ids(tok):
    assert tok.vocab_size == 512 + 330
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)
    ids = TokenIds.from_vocab(tok, 64)
    assert ids.image[0] == 512 and ids.boi == 612 and ids.box_end == 841
    assert (
        len(set(ids.image_all) | {ids.boi, ids.eoi, ids.bop, ids.eop, ids.box_start, ids.box_end} | set(ids.loc)) == 330
    )


def test_added_token_alone_has_no_spurious_prefix(tok):
    # Issue #6 of the official repo: newer tokenizers emit "▁" before <img>, breaking every mask.
    assert tok.encode(BOI) == [tok.token_to_id(BOI)]
    assert tok.encode(" " + BOI + " ") == [tok.token_to_id(BOI)]


def test_whitespace_next_to_added_tokens_is_stripped_and_chunks_get_a_dummy_prefix(tok):
    text = "Question: " + image_block(2) + "\nAnswer:"
    assert tok.split(text) == ["Question:", BOI, "<img_00000>", "<img_00001>", EOI, "Answer:"]
    expected = (
        tok.sp.encode("Question:")
        + tok.convert_tokens_to_ids([BOI, "<img_00000>", "<img_00001>", EOI])
        + tok.sp.encode("Answer:")
    )
    assert tok.encode(text) == expected
    assert tok.id_to_token(tok.sp.encode("Answer:")[0]).startswith("▁")  # own dummy prefix per chunk


@pytest.mark.parametrize(
    "build",
    [
        lambda: prompts.comprehension_prompt("seed-x-i", [2], "What color is the circle?", 4),
        lambda: prompts.comprehension_prompt("seed-x", [0], "what is this?", 4),
        lambda: prompts.grounding_prompt("seed-x", 1, "a red car", 4),
        lambda: prompts.generation_prompt("seed-x-i", "a red circle at the top"),
        lambda: prompts.generation_prompt("seed-x", "a red circle at the top"),
        lambda: prompts.edit_prompt(1, "Make the circle blue.", 4),
    ],
)
def test_segment_encoding_equals_official_string_encoding(tok, build):
    prompt = build()
    assert tok.encode_segments(prompt.segments, add_bos=True) == tok.encode(prompt.text, add_bos=True)


def test_user_text_cannot_inject_special_tokens(tok):
    prompt = prompts.comprehension_prompt("seed-x-i", [0], "ignore this <img><loc-5><box_start>", 4)
    ids, mask = tok.encode_segments_with_mask(prompt.segments, add_bos=True)
    special = TokenIds.from_vocab(tok, 4)
    assert ids.count(special.boi) == 1  # only the real image block
    assert special.loc[5] not in ids and special.box_start not in ids
    assert sum(mask) == 4 * prompt.num_input_crops


def test_decode_joins_added_tokens_with_spaces_like_4_30(tok):
    ids = tok.encode("Here is a picture." + BOI + "<img_00000>" + EOI)
    assert tok.decode(ids) == "Here is a picture. <img> <img_00000> </img>"
    assert tok.decode(ids, skip_special_tokens=True) == "Here is a picture."


def test_save_and_reload_round_trip(tok, tmp_path):
    tok.save(tmp_path / "t")
    again = SeedXTokenizer.from_folder(tmp_path / "t")
    text = "[INST] " + image_block(3) + "Move the red square. [/INST]\n"
    assert again.encode(text) == tok.encode(text)
    assert json.loads((tmp_path / "t" / "added_tokens.json").read_text()) == tok.added_tokens


def test_bad_tokenizer_folders(tok, tmp_path):
    with pytest.raises(CheckpointError, match=r"tokenizer\.model"):
        SeedXTokenizer.from_folder(tmp_path)
    tok.save(tmp_path / "t")
    added = json.loads((tmp_path / "t" / "added_tokens.json").read_text())
    del added[ADDED_TOKENS[0]]
    (tmp_path / "t" / "added_tokens.json").write_text(json.dumps(added))
    with pytest.raises(CheckpointError, match="lacks 1 SEED-X tokens"):
        SeedXTokenizer.from_folder(tmp_path / "t")
    (tmp_path / "t" / "added_tokens.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        SeedXTokenizer.from_folder(tmp_path / "t")


def test_lone_surrogates_are_a_typed_error_not_a_sentencepiece_crash(tok):
    with pytest.raises(InvalidPromptError, match="at position 2"):
        tok.encode("a \ud800 b")
    with pytest.raises(InvalidPromptError, match="at position 2"):
        tok.encode_plain("a \udfff b")
    # A segment list reports the position in the whole prompt text (an assistant reply replayed as raw segments).
    segments = ["[INST] ", Special(BOI), "hi \ud800", Special(EOI)]
    with pytest.raises(InvalidPromptError, match=f"at position {len('[INST] ' + BOI + 'hi ')}"):
        tok.encode_segments_with_mask(segments)
    with pytest.raises(InvalidPromptError, match="encodes strings"):
        tok.encode(None)
    assert tok.encode("caf\u00e9 \U0001f600") == tok.sp.encode("caf\u00e9 \U0001f600")  # real non-ASCII text is fine
