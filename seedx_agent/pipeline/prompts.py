"""Prompt templates of the three SEED-X variants; the only place prompt strings live (reference §7).

Prompts are built as segments: plain text (never scanned for tokens, so user text cannot inject image
or box tokens) and ``Special`` added tokens. ``Prompt.text`` gives the exact official string.

``check_text`` is the one validation of caller text for the whole library (prompts here, the tokenizer, the image
memory's queries and record fields): it refuses lone surrogates, the only characters of a Python ``str`` that
no encoding (UTF-8, SentencePiece) accepts, naming their position and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from seedx_agent.errors import ConfigError, InvalidPromptError
from seedx_agent.pipeline.tokens import BOI, BOP, BOX_START, EOI, EOP, Box, InputSlot, Special, box_tokens, image_token

__all__ = [
    "INST_CLOSE",
    "INST_OPEN",
    "MAX_PROMPT_CHARS",
    "Prompt",
    "Question",
    "Turn",
    "chat_prompt",
    "check_text",
    "comprehension_prompt",
    "edit_prompt",
    "generation_prompt",
    "grounding_prompt",
    "image_segments",
]

INST_OPEN, INST_CLOSE = "[INST] ", " [/INST]\n"
GENERATE_PREFIX = "Generate an image: "
# SEED-X-I grounding is a free question (§7); this phrasing asks for the location like the demo does.
GROUNDING_QUESTION = "Where is {phrase}? Show me the location."
PRETRAINED_GROUNDING_SUFFIX = " [["
MAX_PROMPT_CHARS = 20_000

Style = Literal["seed-x", "seed-x-i", "seed-x-edit"]
# A question is plain text, or text interleaved with referring boxes (pixel xyxy ``Box`` of the image).
Question = str | Sequence[str | Box]


@dataclass
class Prompt:
    """A prompt as segments plus the number of crops whose features it expects, in order."""

    segments: list[str] = field(default_factory=list)
    num_input_crops: int = 0

    def add_text(self, text: str) -> Prompt:
        self.segments.append(str(text))
        return self

    def add_special(self, token: str) -> Prompt:
        self.segments.append(Special(token))
        return self

    def extend(self, other: Prompt) -> Prompt:
        self.segments.extend(other.segments)
        self.num_input_crops += other.num_input_crops
        return self

    @property
    def text(self) -> str:
        return "".join(self.segments)

    @property
    def ends_with_boi(self) -> bool:
        return bool(self.segments) and isinstance(self.segments[-1], Special) and self.segments[-1] == BOI


# U+D800..U+DFFF: halves of UTF-16 surrogate pairs. A Python str can hold them alone (e.g. from
# ``bytes.decode(errors="surrogateescape")``, a JSON "\ud800" escape or a mis-decoded terminal argument), but no
# encoding does: sentencepiece fails inside pybind11 and ``str.encode("utf-8")`` raises UnicodeEncodeError.
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def check_text(text: str, what: str, *, error: type[Exception] = InvalidPromptError, offset: int = 0) -> str:
    """``text`` unchanged when every character can be encoded, else ``error`` naming the first bad one.

    ``what`` names the argument in the message ("question", "query", ...); ``offset`` is added to the reported
    position when ``text`` is a piece of a longer string. Only string *content* is checked here: callers check the
    type, emptiness and length themselves.
    """
    if text.isascii():
        return text
    match = _SURROGATE_RE.search(text)
    if match is None:
        return text
    position = offset + match.start()
    raise error(
        f"{what} holds an invalid character {match.group()!r} at position {position}: a lone UTF-16 surrogate, "
        "which is not text and cannot be encoded; remove it, or decode the source properly (e.g. "
        "bytes.decode('utf-8', errors='replace') instead of errors='surrogateescape', or join a surrogate pair "
        "with s.encode('utf-16', 'surrogatepass').decode('utf-16'))"
    )


def _user_text(text: str, what: str) -> str:
    if not isinstance(text, str):
        raise InvalidPromptError(f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidPromptError(f"{what} is empty; pass a non-empty string")
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidPromptError(f"{what} has {len(text)} characters; the limit is {MAX_PROMPT_CHARS}")
    return check_text(text, what)


def _question(prompt: Prompt, question: Question, image_size: tuple[int, int] | None) -> None:
    """Append ``question``: text segments as plain text, each ``Box`` as its ``<box_start><loc-..>x4<box_end>``
    tokens in 224 bins of ``image_size`` (referring input, reference §7.1)."""
    if isinstance(question, str):
        prompt.add_text(_user_text(question, "question"))
        return
    if not isinstance(question, (list, tuple)) or not question:
        raise InvalidPromptError(
            f"question must be a string (or a non-empty list of strings and Boxes), got {type(question).__name__}"
        )
    parts = list(question)
    text = "".join(part for part in parts if isinstance(part, str))
    for index, part in enumerate(parts):
        if not isinstance(part, (str, Box)):
            raise InvalidPromptError(f"question part {index} is a {type(part).__name__}; use str or tokens.Box")
    if not text.strip():
        raise InvalidPromptError("question has no text around its boxes; say what to do with the region")
    _user_text(text, "question")  # the length limit counts the text parts together
    for part in parts:
        if isinstance(part, str):
            prompt.add_text(part)
            continue
        if image_size is None:
            raise InvalidPromptError("a referring box needs exactly one image to refer to; pass a single image")
        for token in box_tokens(part, image_size):
            prompt.add_special(token)


def _block(prompt: Prompt, begin: str, end: str, num_image_tokens: int) -> None:
    prompt.add_special(begin)
    for i in range(num_image_tokens):
        prompt.segments.append(InputSlot(image_token(i)))
    prompt.add_special(end)
    prompt.num_input_crops += 1


def image_segments(num_tiles: int, num_image_tokens: int) -> Prompt:
    """Any-res block of one image: ``num_tiles`` ``<patch>`` blocks, then the thumbnail ``<img>`` block."""
    if num_tiles < 0:
        raise ValueError("num_tiles must be >= 0")
    prompt = Prompt()
    for _ in range(num_tiles):
        _block(prompt, BOP, EOP, num_image_tokens)
    _block(prompt, BOI, EOI, num_image_tokens)
    return prompt


def _images(tiles_per_image: Sequence[int], num_image_tokens: int) -> Prompt:
    prompt = Prompt()
    for tiles in tiles_per_image:
        prompt.extend(image_segments(tiles, num_image_tokens))
    return prompt


def _check_style(style: str) -> None:
    if style not in ("seed-x", "seed-x-i", "seed-x-edit"):
        raise ConfigError(f"unknown prompt style {style!r}; use 'seed-x', 'seed-x-i' or 'seed-x-edit'")


def comprehension_prompt(
    style: Style,
    tiles_per_image: Sequence[int],
    question: Question,
    num_image_tokens: int,
    *,
    image_first: bool = True,
    image_size: tuple[int, int] | None = None,
) -> Prompt:
    """Question about images: ``[INST] <images>question [/INST]\\n`` or ``Question: <images>q\\nAnswer:``.

    ``question`` may interleave text with referring ``Box``es of the (single) image of ``image_size``.
    """
    _check_style(style)
    text = Prompt()
    _question(text, question, image_size if len(tiles_per_image) == 1 else None)
    images = _images(tiles_per_image, num_image_tokens)
    body = Prompt()
    if image_first:
        body.extend(images).extend(text)
    else:
        body.extend(text).extend(images)
    if style == "seed-x":
        return Prompt().add_text("Question: ").extend(body).add_text("\nAnswer:")
    return Prompt().add_text(INST_OPEN).extend(body).add_text(INST_CLOSE)


def grounding_prompt(style: Style, num_tiles: int, phrase: str, num_image_tokens: int) -> Prompt:
    """Ask for a box: pre-trained ``<image>phrase [[ <box_start>``; instruct: a located question."""
    _check_style(style)
    phrase = _user_text(phrase, "phrase")
    images = image_segments(num_tiles, num_image_tokens)
    if style == "seed-x":
        return Prompt().extend(images).add_text(phrase + PRETRAINED_GROUNDING_SUFFIX).add_special(BOX_START)
    question = GROUNDING_QUESTION.format(phrase=phrase)
    return Prompt().add_text(INST_OPEN).extend(images).add_text(question).add_text(INST_CLOSE)


def generation_prompt(
    style: Style, caption: str, context_tiles: Sequence[int] = (), num_image_tokens: int = 0
) -> Prompt:
    """Text-to-image: pre-trained ``{caption}<img>`` (forces an image) or the instruct template.

    ``context_tiles`` (tiles per context image) puts earlier pictures before the request in the same user turn,
    as SEED-X-I reads interleaved images and text (``[INST] <images>Generate an image: caption [/INST]``);
    with none, the prompt is exactly the official single-turn template."""
    _check_style(style)
    caption = _user_text(caption, "prompt")
    if not context_tiles:  # the official template, token for token
        if style == "seed-x":
            return Prompt().add_text(caption).add_special(BOI)
        return Prompt().add_text(INST_OPEN + GENERATE_PREFIX).add_text(caption).add_text(INST_CLOSE)
    images = _images(context_tiles, num_image_tokens)
    if style == "seed-x":
        return Prompt().extend(images).add_text(caption).add_special(BOI)
    return Prompt().add_text(INST_OPEN).extend(images).add_text(GENERATE_PREFIX + caption).add_text(INST_CLOSE)


def edit_prompt(num_tiles: int, instruction: str, num_image_tokens: int, *, image_first: bool = True) -> Prompt:
    """SEED-X-Edit: ``[INST] <source image>instruction [/INST]\\n`` (single turn, §7)."""
    instruction = _user_text(instruction, "instruction")
    images = image_segments(num_tiles, num_image_tokens)
    body = Prompt()
    if image_first:
        body.extend(images).add_text(instruction)
    else:
        body.add_text(instruction).extend(images)
    return Prompt().add_text(INST_OPEN).extend(body).add_text(INST_CLOSE)


@dataclass
class Turn:
    """One chat turn. ``images`` (user turns only) are given as tile counts of their any-res split;
    assistant turns carry ``text`` that may already contain special segments (a replayed answer)."""

    role: Literal["user", "assistant"]
    text: str = ""
    tiles_per_image: tuple[int, ...] = ()
    segments: list[str] | None = None  # pre-built assistant segments (e.g. with an image block)


def chat_prompt(style: Style, turns: Sequence[Turn], num_image_tokens: int) -> Prompt:
    """Multi-turn SFT format: first user turn ``[INST] .. [/INST]\\n``, later ``\\n[INST] .. [/INST]\\n``,
    assistant text appended raw, no ``</s>`` between turns (§7). Must end with a user turn."""
    _check_style(style)
    if style == "seed-x":
        raise ConfigError("the pre-trained seed-x has no chat format; use seed-x-i for multi-turn chat")
    if not turns or turns[-1].role != "user":
        raise InvalidPromptError("a chat must be non-empty and end with a user turn")
    prompt = Prompt()
    seen_user = False
    for index, turn in enumerate(turns):
        if turn.role == "user":
            has_images = bool(turn.tiles_per_image)
            text = turn.text if has_images and not turn.text.strip() else _user_text(turn.text, f"turn {index} text")
            prompt.add_text(("\n" if seen_user else "") + INST_OPEN)
            if has_images:
                prompt.extend(_images(turn.tiles_per_image, num_image_tokens))
            prompt.add_text(text).add_text(INST_CLOSE)
            seen_user = True
        elif turn.role == "assistant":
            if not seen_user:
                raise InvalidPromptError("a chat must start with a user turn")
            if turn.segments is not None:
                prompt.segments.extend(turn.segments)
            else:
                prompt.add_text(check_text(turn.text, f"turn {index} text"))
        else:
            raise InvalidPromptError(f"turn {index} has unknown role {turn.role!r}; use 'user' or 'assistant'")
    return prompt
