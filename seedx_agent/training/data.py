"""Readers for the official training data formats (reference §12.3) and our story sequences.

Every reader yields ``TrainingExample``s built by ``examples.py``, so all formats share one set of
masking rules. Image paths in the files are resolved under ``image_root`` and may not leave it.
Samples that cannot be used (missing image, too long) are skipped and counted in ``ReaderStats``,
never silently: the caller decides whether a skip rate is acceptable.

Formats:

* LLaVA jsonl: ``{"image": "rel/path.jpg" | "" | "none" | null, "data": [user, assistant, ...]}``;
* caption pairs (jsonl): ``{"image": "rel/path.jpg", "caption": "..."}`` (the webdataset shards of the
  release carry the same pair per sample) -> text-to-image examples;
* edit jsonl: ``{"source_image", "target_image", "instruction"}`` with optional ``instruction_new`` and
  ``response`` replacing the instruction and the polite response;
* story jsonl (ours): ``{"images": [...], "texts": [...]}``, one text per image; step ``i`` sees the
  previous images and texts and generates image ``i`` from text ``i`` (as SEED-Story trains).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import torch

from seedx_agent.config import SeedXConfig
from seedx_agent.errors import ConfigError, InvalidImageError, InvalidPromptError
from seedx_agent.pipeline import prompts
from seedx_agent.pipeline.images import load_image
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.training.samples import (
    TrainingExample,
    _Builder,
    comprehension_example,
    edit_example,
    generation_example,
)

__all__ = [
    "POLITE_RESPONSES",
    "ReaderStats",
    "caption_examples",
    "edit_examples",
    "llava_examples",
    "read_jsonl",
    "story_examples",
]

# Responses drawn for edit samples without their own (the official pipe draws one at random too).
POLITE_RESPONSES: tuple[str, ...] = ("Here is the edited image.", "Sure, here it is.", "Done.")


@dataclass
class ReaderStats:
    """What a reader used and skipped, by reason."""

    used: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-empty line; a malformed line raises ``ConfigError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data file {str(path)!r} does not exist")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{number} is not valid JSON ({exc.msg}); fix or remove that line") from exc
            if not isinstance(record, dict):
                raise ConfigError(f"{path}:{number} must be a JSON object, got {type(record).__name__}")
            yield number, record


def _no_image(value: object) -> bool:
    return value is None or (isinstance(value, str) and (not value.strip() or value == "none" or "null" in value))


def _open_image(image_root: Path, relative: object, where: str) -> PIL.Image.Image:
    if not isinstance(relative, str):
        raise ConfigError(f"{where}: image path must be a string, got {type(relative).__name__}")
    root = image_root.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ConfigError(f"{where}: image path {relative!r} leaves the image root {str(root)!r}")
    return load_image(path)


def _required(record: dict[str, Any], key: str, where: str) -> Any:
    if key not in record:
        raise ConfigError(f"{where}: missing field {key!r}")
    return record[key]


def _built(
    path: str | Path,
    stats: ReaderStats | None,
    build: Callable[[dict[str, Any], str], TrainingExample],
    text_reason: str,
) -> Iterator[TrainingExample]:
    """Run ``build(record, where)`` per line, counting unreadable images and unusable texts as skips."""
    stats = stats if stats is not None else ReaderStats()
    for number, record in read_jsonl(path):
        try:
            example = build(record, f"{path}:{number}")
        except InvalidImageError:
            stats.skip("unreadable image")
            continue
        except InvalidPromptError:
            stats.skip(text_reason)
            continue
        stats.used += 1
        yield example


def llava_examples(
    path: str | Path,
    image_root: str | Path,
    tokenizer: SeedXTokenizer,
    config: SeedXConfig,
    *,
    max_length: int = 880,
    seed: int = 0,
    stats: ReaderStats | None = None,
) -> Iterator[TrainingExample]:
    """Comprehension examples; the image block goes before or after the first question with p = 1/2."""
    rng = random.Random(seed)

    def build(record: dict[str, Any], where: str) -> TrainingExample:
        turns = _required(record, "data", where)
        if not isinstance(turns, list) or not turns or len(turns) % 2 or not all(isinstance(t, str) for t in turns):
            raise ConfigError(f"{where}: 'data' must be a list of user/assistant strings of even length")
        image_first = rng.random() < 0.5
        images = [] if _no_image(record.get("image")) else [_open_image(Path(image_root), record["image"], where)]
        return comprehension_example(tokenizer, config, turns, images, image_first=image_first, max_length=max_length)

    return _built(path, stats, build, "too long or empty text")


def caption_examples(
    path: str | Path,
    image_root: str | Path,
    tokenizer: SeedXTokenizer,
    config: SeedXConfig,
    *,
    max_length: int = 260,
    style: prompts.Style = "seed-x-i",
    stats: ReaderStats | None = None,
) -> Iterator[TrainingExample]:
    """Text-to-image examples from caption pairs (the caption pipe in generation mode)."""

    def build(record: dict[str, Any], where: str) -> TrainingExample:
        caption = _required(record, "caption", where)
        image = _open_image(Path(image_root), _required(record, "image", where), where)
        return generation_example(tokenizer, config, caption, image, style=style, max_length=max_length)

    return _built(path, stats, build, "too long or empty caption")


def edit_examples(
    path: str | Path,
    image_root: str | Path,
    tokenizer: SeedXTokenizer,
    config: SeedXConfig,
    *,
    max_length: int = 320,
    seed: int = 0,
    stats: ReaderStats | None = None,
) -> Iterator[TrainingExample]:
    """Edit triplets; ``instruction_new``/``response`` override the instruction and the drawn response."""
    rng = random.Random(seed)

    def build(record: dict[str, Any], where: str) -> TrainingExample:
        instruction = record.get("instruction_new") or _required(record, "instruction", where)
        response = record.get("response") or rng.choice(POLITE_RESPONSES)
        source = _open_image(Path(image_root), _required(record, "source_image", where), where)
        target = _open_image(Path(image_root), _required(record, "target_image", where), where)
        return edit_example(tokenizer, config, source, instruction, target, response=response, max_length=max_length)

    return _built(path, stats, build, "too long or empty instruction")


def story_examples(
    path: str | Path,
    image_root: str | Path,
    tokenizer: SeedXTokenizer,
    config: SeedXConfig,
    *,
    context: int = 2,
    max_length: int = 512,
    stats: ReaderStats | None = None,
) -> Iterator[TrainingExample]:
    """One example per story step ``i >= 1``: the last ``context`` (image, text) steps as a chat, then
    text ``i`` asking for the next image, answered by image ``i`` (its thumbnail is the target)."""
    from seedx_agent.pipeline.anyres import preprocess

    stats = stats if stats is not None else ReaderStats()
    n_tokens = config.lvlm.num_image_tokens
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        image_paths, texts = _required(record, "images", where), _required(record, "texts", where)
        if not isinstance(image_paths, list) or not isinstance(texts, list) or len(image_paths) != len(texts):
            raise ConfigError(f"{where}: 'images' and 'texts' must be lists of the same length")
        try:
            images = [_open_image(Path(image_root), p, where) for p in image_paths]
        except InvalidImageError:
            stats.skip("unreadable image")
            continue
        for step in range(1, len(images)):
            history = range(max(0, step - context), step)
            crops = [preprocess(images[i], config.vision, config.anyres.edit_grids) for i in history]
            prompt = prompts.Prompt().add_text(prompts.INST_OPEN)
            for i, crop in zip(history, crops):
                prompt.extend(prompts.image_segments(crop.num_crops - 1, n_tokens)).add_text(str(texts[i]) + "\n")
            try:
                prompt.add_text(prompts._user_text(str(texts[step]), "story text")).add_text(prompts.INST_CLOSE)
            except InvalidPromptError:
                stats.skip("empty text")
                continue
            builder = _Builder(tokenizer)
            builder.add_prompt(prompt)
            builder.add_output_image(n_tokens)
            builder.add_eos()
            if len(builder.ids) > max_length:
                stats.skip("too long")
                continue
            target = preprocess(images[step], config.vision, ("1x1",))
            pixel_values = torch.cat([*(c.pixel_values for c in crops), target.pixel_values])
            positions = torch.cat([*(c.patch_positions for c in crops), target.patch_positions])
            n_inputs = sum(c.num_crops for c in crops)
            stats.used += 1
            yield TrainingExample(
                builder.ids,
                builder.labels,
                builder.cmp,
                builder.gen,
                pixel_values,
                positions,
                [True] * n_inputs + [False] * target.num_crops,
                [False] * n_inputs + [False] * (target.num_crops - 1) + [True],
            )
