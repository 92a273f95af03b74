"""Readers of the official data formats and our story sequences."""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image
import pytest

from seedx_agent.errors import ConfigError
from seedx_agent.pipeline.tokens import BOI
from seedx_agent.training.data import (
    POLITE_RESPONSES,
    ReaderStats,
    caption_examples,
    edit_examples,
    llava_examples,
    story_examples,
)
from seedx_agent.training.samples import IGNORE_INDEX


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for name, colour in (("a.png", "red"), ("b.png", "blue"), ("c.png", "green")):
        PIL.Image.new("RGB", (56, 56), colour).save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    return tmp_path


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_llava_reader_handles_text_only_and_skips_broken_images(root: Path, tok, config) -> None:
    data = write_jsonl(
        root / "llava.jsonl",
        [
            {"image": "a.png", "data": ["what colour?", "red"]},
            {"image": "none", "data": ["hello", "hi"]},
            {"image": "broken.png", "data": ["q", "a"]},
        ],
    )
    stats = ReaderStats()
    examples = list(llava_examples(data, root, tok, config, stats=stats))
    assert len(examples) == 2 and stats.used == 2 and stats.skipped == {"unreadable image": 1}
    assert examples[0].pixel_values.shape[0] == 2 and examples[1].pixel_values.shape[0] == 0
    assert [t for t, lab in zip(examples[1].input_ids, examples[1].labels) if lab != IGNORE_INDEX] == [
        *tok.encode("hi"),
        tok.eos_token_id,
    ]


def test_caption_and_edit_readers(root: Path, tok, config) -> None:
    captions = write_jsonl(root / "cap.jsonl", [{"image": "a.png", "caption": "a red picture"}])
    (example,) = caption_examples(captions, root, tok, config)
    assert example.embeds_gen_mask == [False, True] and sum(example.ids_gen_mask) == config.lvlm.num_image_tokens

    edits = write_jsonl(
        root / "edit.jsonl",
        [
            {"source_image": "a.png", "target_image": "b.png", "instruction": "make it blue"},
            {
                "source_image": "a.png",
                "target_image": "c.png",
                "instruction": "ignored",
                "instruction_new": "make it green",
                "response": "Green it is.",
            },
        ],
    )
    first, second = edit_examples(edits, root, tok, config, seed=0)
    labelled = [t for t, lab in zip(second.input_ids, second.labels) if lab != IGNORE_INDEX]
    assert labelled[: len(tok.encode("Green it is."))] == tok.encode("Green it is.")
    assert tok.decode(second.input_ids).count("make it green") == 1 and "ignored" not in tok.decode(second.input_ids)
    first_text = tok.decode([t for t, lab in zip(first.input_ids, first.labels) if lab != IGNORE_INDEX])
    assert any(response in first_text for response in POLITE_RESPONSES)


def test_story_reader_conditions_on_previous_steps(root: Path, tok, config) -> None:
    stories = write_jsonl(
        root / "story.jsonl", [{"images": ["a.png", "b.png", "c.png"], "texts": ["one", "two", "three"]}]
    )
    steps = list(story_examples(stories, root, tok, config, context=2))
    assert len(steps) == 2  # steps 1 and 2 (step 0 has no history)
    n = config.lvlm.num_image_tokens
    assert sum(steps[0].ids_cmp_mask) == 2 * n and sum(steps[1].ids_cmp_mask) == 4 * n
    for step in steps:
        assert step.input_ids.count(tok.added_tokens[BOI]) == 1 + sum(step.embeds_cmp_mask) // 2
        assert step.embeds_gen_mask[-1] and sum(step.embeds_gen_mask) == 1


def test_reader_errors_name_the_line_and_the_fix(root: Path, tok, config) -> None:
    bad_json = root / "bad.jsonl"
    bad_json.write_text('{"image": "a.png", "data": ["q", "a"]}\n{not json\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2 is not valid JSON"):
        list(llava_examples(bad_json, root, tok, config))
    escape = write_jsonl(root / "escape.jsonl", [{"image": "../../etc/passwd", "caption": "x"}])
    with pytest.raises(ConfigError, match="leaves the image root"):
        list(caption_examples(escape, root, tok, config))
    missing = write_jsonl(root / "missing.jsonl", [{"source_image": "a.png", "instruction": "x"}])
    with pytest.raises(ConfigError, match="missing field 'target_image'"):
        list(edit_examples(missing, root, tok, config))
    odd = write_jsonl(root / "odd.jsonl", [{"image": "a.png", "data": ["only a question"]}])
    with pytest.raises(ConfigError, match="even length"):
        list(llava_examples(odd, root, tok, config))
    with pytest.raises(ConfigError, match="does not exist"):
        list(llava_examples(root / "nope.jsonl", root, tok, config))
