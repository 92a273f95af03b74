"""json_prefix: every prefix of valid JSON is accepted, completion is detected, and invalid text is rejected."""

from __future__ import annotations

import json
import random

import pytest

from seedx_agent.protocol.json_prefix import START, feed, is_complete


def _random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.choice(["object", "array", "string", "number", "literal"] if depth < 3 else ["string", "number"])
    if kind == "object":
        return {f'k{rng.randrange(99)}"\\é': _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    if kind == "array":
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == "string":
        return "".join(rng.choice('ab "\\\n\tü#<>{}') for _ in range(rng.randrange(6)))
    if kind == "number":
        return rng.choice([0, -7, 12.5, -0.25, 1e-7, 3e21, rng.randrange(-1000, 1000)])
    return rng.choice([True, False, None])


@pytest.mark.parametrize("seed", range(30))
def test_every_prefix_of_valid_json_is_accepted(seed: int) -> None:
    rng = random.Random(seed)
    text = json.dumps(_random_value(rng), indent=rng.choice([None, 1]), ensure_ascii=rng.random() < 0.5)
    state = START
    for index, char in enumerate(text):
        state = feed(state, char)
        assert state is not None, (text, index)
    if not text[-1].isdigit():  # a number at the very end could still grow, so it only counts once ended
        assert is_complete(state), text
    assert is_complete(feed(state, " "))  # whitespace ends a trailing number too


@pytest.mark.parametrize(
    "text",
    ['{"a" 1}', '{"a": 1,}', "{'a': 1}", '{"a": tru ', '{"a": 01}', '{"a": 1}}', "[1, 2", '"\\x"', '{"a": -}', "{,}"],
)
def test_invalid_text_is_rejected_or_incomplete(text: str) -> None:
    state = feed(START, text)
    assert state is None or not is_complete(feed(state, " "))


def test_completion_and_trailing_text() -> None:
    assert is_complete(feed(START, '{"name": "ground", "args": {"k": [1, 2.5e3, true, null]}}'))
    assert not is_complete(feed(START, '{"name": "ground"'))
    assert feed(START, '{"a": 1} x') is None  # nothing but whitespace after the value
    assert feed(START, '"\\u00e9"') is not None and feed(START, '"\\u00g"') is None
