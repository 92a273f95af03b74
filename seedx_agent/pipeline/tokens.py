"""The 330 added token strings, image-block strings and the bounding-box codec.

This is the only module that spells token strings. Ids are never hard-coded: ``TokenIds`` looks
every string up in the tokenizer (reference §5.3, §15 issue #6).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from seedx_agent.errors import InvalidBoxError

__all__ = [
    "ADDED_TOKENS",
    "BOI",
    "BOP",
    "BOX_END",
    "BOX_START",
    "EOI",
    "EOP",
    "NUM_IMAGE_SLOTS",
    "NUM_LOC_BINS",
    "Box",
    "InputSlot",
    "Special",
    "TokenIds",
    "box_tokens",
    "decode_box",
    "encode_box",
    "image_block",
    "image_token",
    "loc_token",
    "parse_boxes",
    "patch_block",
    "strip_tags",
]

BOI, EOI = "<img>", "</img>"
BOP, EOP = "<patch>", "</patch>"
BOX_START, BOX_END = "<box_start>", "<box_end>"
NUM_IMAGE_SLOTS = 100
NUM_LOC_BINS = 224


def image_token(index: int) -> str:
    """``<img_00007>``-style placeholder string for slot ``index`` (five digits, zero padded)."""
    return f"<img_{index:05d}>"


def loc_token(index: int) -> str:
    """``<loc-17>``-style location-bin string (no zero padding)."""
    return f"<loc-{index}>"


# Order of the team's own add-special-tokens script (reference §5.3). Only matters when we create a
# tokenizer ourselves; loading always reads the ids from added_tokens.json.
ADDED_TOKENS: tuple[str, ...] = (
    *(image_token(i) for i in range(NUM_IMAGE_SLOTS)),
    BOI,
    EOI,
    BOP,
    EOP,
    *(loc_token(i) for i in range(NUM_LOC_BINS)),
    BOX_START,
    BOX_END,
)
assert len(ADDED_TOKENS) == 330


class Special(str):
    """A trusted added-token string inside a prompt (text segments are never parsed for tokens)."""

    __slots__ = ()


class InputSlot(Special):
    """An image placeholder whose embedding is replaced by an input image's feature (ids_cmp_mask)."""

    __slots__ = ()


def image_block(num_tokens: int, *, begin: str = BOI, end: str = EOI) -> str:
    """``<img><img_00000>...<img_{n-1}></img>``: the block one crop or one output image occupies."""
    return begin + "".join(image_token(i) for i in range(num_tokens)) + end


def patch_block(num_tokens: int) -> str:
    """The any-res tile block ``<patch>...</patch>``."""
    return image_block(num_tokens, begin=BOP, end=EOP)


class _Vocab(Protocol):
    def token_to_id(self, token: str) -> int | None: ...

    @property
    def bos_token_id(self) -> int: ...

    @property
    def eos_token_id(self) -> int: ...

    @property
    def pad_token_id(self) -> int: ...


@dataclass(frozen=True)
class TokenIds:
    """Ids of every special string, resolved from a tokenizer by string."""

    bos: int
    eos: int
    pad: int
    boi: int
    eoi: int
    bop: int
    eop: int
    box_start: int
    box_end: int
    image: tuple[int, ...]  # the num_image_tokens placeholders in order
    image_all: tuple[int, ...]  # all 100 slots (used to mask stray placeholders)
    loc: tuple[int, ...]  # 224 location bins

    @classmethod
    def from_vocab(cls, vocab: _Vocab, num_image_tokens: int) -> TokenIds:
        def look(token: str) -> int:
            token_id = vocab.token_to_id(token)
            if token_id is None:
                raise KeyError(f"tokenizer has no token {token!r}; is added_tokens.json complete?")
            return token_id

        image_all = tuple(look(image_token(i)) for i in range(NUM_IMAGE_SLOTS))
        return cls(
            bos=vocab.bos_token_id,
            eos=vocab.eos_token_id,
            pad=vocab.pad_token_id,
            boi=look(BOI),
            eoi=look(EOI),
            bop=look(BOP),
            eop=look(EOP),
            box_start=look(BOX_START),
            box_end=look(BOX_END),
            image=image_all[:num_image_tokens],
            image_all=image_all,
            loc=tuple(look(loc_token(i)) for i in range(NUM_LOC_BINS)),
        )

    @property
    def forced_image_sequence(self) -> tuple[int, ...]:
        """``<img>``, the placeholders, ``</img>``: what follows once the model opens an image."""
        return (self.boi, *self.image, self.eoi)


# ---------------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixel coordinates of the original image, (x1, y1) top-left."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str | None = None

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    def iou(self, other: Box) -> float:
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


def _check_size(image_size: tuple[int, int]) -> tuple[int, int]:
    if len(image_size) != 2 or any(int(s) <= 0 for s in image_size):
        raise InvalidBoxError(f"image_size must be (width, height) with positive values, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def encode_box(box: Box | Sequence[float], image_size: tuple[int, int]) -> str:
    """Pixel xyxy box -> ``<box_start><loc-xc><loc-yc><loc-w><loc-h><box_end>`` (224 bins).

    The four bins are (x_center, y_center, width, height) in units of 1/224 of the original
    image's width/height (reference §7.1), quantised with ``round`` and clamped to [0, 223].
    """
    return "".join(box_tokens(box, image_size))


def box_tokens(box: Box | Sequence[float], image_size: tuple[int, int]) -> list[str]:
    """``encode_box`` as its six added tokens, for prompts built from segments."""
    width, height = _check_size(image_size)
    if not isinstance(box, Box):
        if len(box) != 4:
            raise InvalidBoxError(f"a box needs 4 numbers (x1, y1, x2, y2), got {len(box)}")
        box = Box(*(float(v) for v in box))
    x1, y1, x2, y2 = box.as_tuple()
    if not all(v == v for v in (x1, y1, x2, y2)):
        raise InvalidBoxError(f"box {box.as_tuple()} contains NaN")
    if x2 <= x1 or y2 <= y1:
        raise InvalidBoxError(f"box {box.as_tuple()} is inverted or empty: need x1 < x2 and y1 < y2")
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise InvalidBoxError(
            f"box {box.as_tuple()} lies outside the {width}x{height} image; clip it to [0, {width}] x [0, {height}]"
        )
    bins = NUM_LOC_BINS

    def q(value: float) -> int:
        return min(bins - 1, max(0, round(value * bins)))

    xc, yc = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
    w, h = (x2 - x1) / width, (y2 - y1) / height
    return [BOX_START, *(loc_token(q(v)) for v in (xc, yc, w, h)), BOX_END]


def decode_box(bins: Sequence[int], image_size: tuple[int, int], *, label: str | None = None) -> Box:
    """Four location bins (xc, yc, w, h) -> pixel xyxy ``Box``, clipped to the image."""
    width, height = _check_size(image_size)
    if len(bins) != 4 or any(not 0 <= int(b) < NUM_LOC_BINS for b in bins):
        raise InvalidBoxError(f"need 4 location bins in [0, {NUM_LOC_BINS - 1}], got {list(bins)}")
    xc, yc, w, h = (int(b) / NUM_LOC_BINS for b in bins)
    x1, x2 = (xc - w / 2) * width, (xc + w / 2) * width
    y1, y2 = (yc - h / 2) * height, (yc + h / 2) * height
    return Box(max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2), label=label)


_BOX_RE = re.compile(r"(?:<box_start>)?\s*<loc-(\d+)>\s*<loc-(\d+)>\s*<loc-(\d+)>\s*<loc-(\d+)>\s*<box_end>")


def parse_boxes(text: str, image_size: tuple[int, int], *, label: str | None = None) -> list[Box]:
    """Every ``[<box_start>]<loc>x4<box_end>`` run in generated text, as pixel boxes.

    ``<box_start>`` is optional because the pre-trained grounding prompt already ends with it.
    Runs with a bin outside [0, 223] are skipped (the model cannot emit them, but text can).
    """
    boxes = []
    for match in _BOX_RE.finditer(text):
        bins = [int(g) for g in match.groups()]
        if all(b < NUM_LOC_BINS for b in bins):
            boxes.append(decode_box(bins, image_size, label=label))
    return boxes


_TAG_RE = re.compile(r"<(?:/?img|/?patch|img_\d{5}|loc-\d+|box_start|box_end|/?s|unk)>")


def strip_tags(text: str) -> str:
    """Remove every special tag for display, collapsing the whitespace it leaves."""
    return re.sub(r"[ \t]{2,}", " ", _TAG_RE.sub("", text)).strip()
