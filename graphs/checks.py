"""Verifying a picture against planned checks with SEED-X itself (GenArtist-style verify step).

An ``ask`` check is a question answered by comprehension; it passes when the answer contains every word the
check expects ("yes", "two", "red"). A ``ground`` check locates a phrase; it passes when a box is found and,
if a region is expected ("top left", "left", "center"), the box centre lies in that region of a 3x3 grid.
Nothing here knows what the pictures show: the planner writes the checks, SEED-X answers them.
"""

from __future__ import annotations

import re
from typing import Any

from PIL import Image

from seedx_agent.errors import ConfigError
from seedx_agent.pipeline.tokens import Box

from .planning import Check

__all__ = ["REGION_WORDS", "CheckResult", "box_region", "in_region", "run_check", "run_checks"]

_HORIZONTAL = {"left": 0, "right": 2}
_VERTICAL = {"top": 0, "upper": 0, "bottom": 2, "lower": 2}
_CENTRE = {"center", "centre", "middle"}
REGION_WORDS = frozenset({*_HORIZONTAL, *_VERTICAL, *_CENTRE})
_ROWS = ("top", "center", "bottom")
_COLS = ("left", "center", "right")

CheckResult = dict[str, Any]  # the check's fields + observed (answer text or region) + passed + boxes


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _same_word(a: str, b: str) -> bool:
    """Equal, or singular/plural of a word of three letters or more ("boat"/"boats"; never "ye"/"yes")."""
    short, long = sorted((a, b), key=len)
    return a == b or (len(short) >= 3 and long == short + "s")


def _parse_region(region: str) -> tuple[int | None, int | None]:
    """(row, col) of a region name, ``None`` where it says nothing ("left" -> (None, 0)); ``ConfigError`` if odd."""
    words = _words(region)
    if not words or not set(words) <= REGION_WORDS | {"the", "of", "side", "corner"}:
        raise ConfigError(
            f"region {region!r} is not one of: top/bottom/left/right/center and their pairs such as 'top left'"
        )
    row = next((_VERTICAL[w] for w in words if w in _VERTICAL), None)
    col = next((_HORIZONTAL[w] for w in words if w in _HORIZONTAL), None)
    if any(w in _CENTRE for w in words):
        row = 1 if row is None else row
        col = 1 if col is None else col
    return row, col


def _cell(box: Box, width: int, height: int) -> tuple[int, int]:
    """(row, col) of the box centre in a 3x3 grid over the image."""
    col = min(2, max(0, int((box.x1 + box.x2) / 2 / width * 3)))
    row = min(2, max(0, int((box.y1 + box.y2) / 2 / height * 3)))
    return row, col


def box_region(box: Box, width: int, height: int) -> str:
    """The 3x3 region of a pixel box's centre, e.g. "top left", "center", "bottom"."""
    row, col = _cell(box, width, height)
    if (row, col) == (1, 1):
        return "center"
    return " ".join(part for part in (_ROWS[row] if row != 1 else "", _COLS[col] if col != 1 else "") if part)


def in_region(box: Box, width: int, height: int, region: str) -> bool:
    """Whether the box centre lies in ``region`` (a region name leaves unmentioned axes free)."""
    want_row, want_col = _parse_region(region)
    row, col = _cell(box, width, height)
    return (want_row is None or want_row == row) and (want_col is None or want_col == col)


def _answer_matches(answer: str, expect: str) -> bool:
    said = _words(answer)
    return all(any(_same_word(word, got) for got in said) for word in _words(expect))


def run_check(engine: Any, image: Image.Image, check: Check) -> CheckResult:
    """Verify one check on ``image`` with the engine's ``comprehend``/``ground``."""
    result: CheckResult = check.model_dump()
    if check.kind == "ask":
        answer = engine.comprehend(image, check.query).text.strip()
        result.update(observed=answer, boxes=[], passed=_answer_matches(answer, check.expect or "yes"))
        return result
    boxes = engine.ground(image, check.query).boxes
    width, height = image.size
    observed = box_region(boxes[0], width, height) if boxes else None
    passed = bool(boxes) and (check.expect is None or any(in_region(box, width, height, check.expect) for box in boxes))
    result.update(observed=observed, boxes=[list(box.as_tuple()) for box in boxes], passed=passed)
    return result


def run_checks(engine: Any, image: Image.Image, checks: list[Check]) -> list[CheckResult]:
    """Verify every check (all of them, so a report shows each verdict)."""
    for check in checks:
        if check.kind == "ground" and check.expect is not None:
            _parse_region(check.expect)  # refuse an unreadable region before spending model time
    return [run_check(engine, image, check) for check in checks]
