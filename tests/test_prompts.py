import re

import pytest

from seedx_agent.errors import ConfigError, InvalidBoxError, InvalidPromptError
from seedx_agent.pipeline import prompts
from seedx_agent.pipeline.tokens import Box, encode_box, image_block, parse_boxes, patch_block


def test_official_strings():
    img = patch_block(4) + patch_block(4) + image_block(4)
    assert (
        prompts.comprehension_prompt("seed-x-i", [2], "Describe it.", 4).text == f"[INST] {img}Describe it. [/INST]\n"
    )
    assert (
        prompts.comprehension_prompt("seed-x", [2], "Describe it.", 4).text == f"Question: {img}Describe it.\nAnswer:"
    )
    assert prompts.grounding_prompt("seed-x", 2, "a car", 4).text == f"{img}a car [[<box_start>"
    assert prompts.generation_prompt("seed-x", "a cat").text == "a cat<img>"
    assert prompts.generation_prompt("seed-x", "a cat").ends_with_boi
    assert prompts.generation_prompt("seed-x-i", "a cat").text == "[INST] Generate an image: a cat [/INST]\n"
    one = patch_block(4) + image_block(4)
    assert prompts.edit_prompt(1, "Make it red.", 4).text == f"[INST] {one}Make it red. [/INST]\n"
    assert prompts.edit_prompt(1, "Make it red.", 4, image_first=False).text == f"[INST] Make it red.{one} [/INST]\n"


def test_crop_counting():
    p = prompts.comprehension_prompt("seed-x-i", [3, 0], "Compare.", 64)
    assert p.num_input_crops == 4 + 1
    assert p.text.count("<img_00063>") == 5


def test_multi_turn_format():
    turns = [
        prompts.Turn("user", "What is it?", (1,)),
        prompts.Turn("assistant", "A dog."),
        prompts.Turn("user", "What color?"),
    ]
    text = prompts.chat_prompt("seed-x-i", turns, 2).text
    img = patch_block(2) + image_block(2)
    assert text == f"[INST] {img}What is it? [/INST]\nA dog.\n[INST] What color? [/INST]\n"
    assert "</s>" not in text


@pytest.mark.parametrize("bad", ["", "   ", 5, "x" * 20001])
def test_bad_user_text(bad):
    with pytest.raises(InvalidPromptError):
        prompts.generation_prompt("seed-x-i", bad)


def test_bad_chats_and_styles():
    with pytest.raises(InvalidPromptError, match="end with a user turn"):
        prompts.chat_prompt("seed-x-i", [prompts.Turn("user", "hi"), prompts.Turn("assistant", "yo")], 4)
    with pytest.raises(InvalidPromptError, match="start with a user"):
        prompts.chat_prompt("seed-x-i", [prompts.Turn("assistant", "yo"), prompts.Turn("user", "hi")], 4)
    with pytest.raises(ConfigError, match="no chat format"):
        prompts.chat_prompt("seed-x", [prompts.Turn("user", "hi")], 4)
    with pytest.raises(ConfigError, match="unknown prompt style"):
        prompts.generation_prompt("llava", "a cat")


def test_referring_box_is_written_as_box_tokens_and_reads_back():
    size = (640, 480)
    box = Box(64.0, 48.0, 320.0, 240.0)
    prompt = prompts.comprehension_prompt("seed-x-i", [0], ["What colour is ", box, "?"], 4, image_size=size)
    expected = f"[INST] {image_block(4)}What colour is {encode_box(box, size)}? [/INST]\n"
    assert prompt.text == expected
    # the reverse of grounding: the written box parses back to the same region within one bin
    (back,) = parse_boxes(prompt.text, size)
    assert all(abs(a - b) <= max(size) / 224 for a, b in zip(back.as_tuple(), box.as_tuple(), strict=True))
    # box tokens are added-token segments (a plain-text question stays plain text)
    assert [s for s in prompt.segments if s.startswith("<loc-")] == re.findall(r"<loc-\d+>", expected)


@pytest.mark.parametrize(
    ("question", "tiles", "size", "words"),
    [
        (["Where is ", Box(0, 0, 10, 10)], [0, 0], (20, 20), "exactly one image"),
        (["Where is ", Box(0, 0, 10, 10)], [0], None, "exactly one image"),
        ([Box(0, 0, 10, 10), "  "], [0], (20, 20), "no text around its boxes"),
        (["Where is ", (0, 0, 10, 10)], [0], (20, 20), "part 1 is a tuple"),
        ([], [0], (20, 20), "non-empty list"),
        (["Where is ", Box(0, 0, 30, 10)], [0], (20, 20), "outside the 20x20 image"),
    ],
)
def test_bad_referring_questions(question, tiles, size, words):
    with pytest.raises((InvalidPromptError, InvalidBoxError), match=words):
        prompts.comprehension_prompt("seed-x-i", tiles, question, 4, image_size=size)


def test_generation_with_context_images_reads_them_in_the_same_turn():
    img = patch_block(4) + image_block(4) + image_block(4)  # one picture of 1 tile + thumbnail, one thumbnail only
    with_context = prompts.generation_prompt("seed-x-i", "the fox flies", [1, 0], 4)
    assert with_context.text == f"[INST] {img}Generate an image: the fox flies [/INST]\n"
    assert with_context.num_input_crops == 3
    assert prompts.generation_prompt("seed-x", "the fox flies", [0], 4).text == f"{image_block(4)}the fox flies<img>"
    # without context the official single-turn template is unchanged, segment for segment
    assert (
        prompts.generation_prompt("seed-x-i", "a cat", [], 4).segments
        == prompts.generation_prompt("seed-x-i", "a cat").segments
    )


SURROGATE_TEXT = "a \ud800 b"  # a lone surrogate: a str can hold it, no encoding (or SentencePiece) accepts it


@pytest.mark.parametrize(
    ("what", "build"),
    [
        ("prompt", lambda text: prompts.generation_prompt("seed-x-i", text)),
        ("prompt", lambda text: prompts.generation_prompt("seed-x", text, [1], 4)),
        ("question", lambda text: prompts.comprehension_prompt("seed-x-i", [1], text, 4)),
        (
            "question",
            lambda text: prompts.comprehension_prompt("seed-x-i", [0], [text, Box(0, 0, 4, 4)], 4, image_size=(8, 8)),
        ),
        ("phrase", lambda text: prompts.grounding_prompt("seed-x-i", 1, text, 4)),
        ("instruction", lambda text: prompts.edit_prompt(1, text, 4)),
        ("turn 0 text", lambda text: prompts.chat_prompt("seed-x-i", [prompts.Turn("user", text)], 4)),
        (
            "turn 1 text",
            lambda text: prompts.chat_prompt(
                "seed-x-i", [prompts.Turn("user", "hi"), prompts.Turn("assistant", text), prompts.Turn("user", "ok")], 4
            ),
        ),
    ],
)
def test_lone_surrogates_are_refused_with_their_position(what, build):
    with pytest.raises(InvalidPromptError) as caught:
        build(SURROGATE_TEXT)
    message = str(caught.value)
    assert message.startswith(f"{what} holds an invalid character '\\ud800' at position 2")
    assert "surrogate" in message and "remove it" in message
    build("a \u00e9\u4e2d\U0001f600 b")  # real non-ASCII text (a proper astral character included) is fine


def test_check_text_reports_the_first_bad_character_and_offsets():
    assert prompts.check_text("plain", "x") == "plain"
    assert prompts.check_text("caf\u00e9 \U0001f600", "x") == "caf\u00e9 \U0001f600"
    with pytest.raises(InvalidPromptError, match="position 7"):
        prompts.check_text("abc\udfff", "x", offset=4)  # a low surrogate alone, at 3 + offset 4
    with pytest.raises(KeyError, match="query holds an invalid character"):
        prompts.check_text("\ud83d\ude00", "query", error=KeyError)  # an unjoined pair is two bad characters
