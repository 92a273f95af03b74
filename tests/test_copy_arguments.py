"""CopyArguments: free-text tool arguments become whole-word spans of the user's turns; nothing else changes."""

from __future__ import annotations

import json
import re

import pytest
import torch

from seedx_agent.copy_arguments import FREE_TEXT_ARGUMENTS, CopyArguments, copy_sources
from seedx_agent.tokenizer import SeedXTokenizer
from seedx_agent.tool_protocol import SYSTEM_CLOSE, SYSTEM_OPEN

REQUEST = "Find the small red circle at the top left in #1."
OPEN_CALL = '<tool_call>{"name": "ground", "args": {"image_id": "#1", "phrase": "'


@pytest.fixture(scope="module")
def tokenizer() -> SeedXTokenizer:
    return SeedXTokenizer.tiny()


@pytest.fixture(scope="module")
def processor(tokenizer: SeedXTokenizer) -> CopyArguments:
    return CopyArguments(
        tokenizer, copy_sources([SYSTEM_OPEN + "Tools: ground(image_id, phrase)" + SYSTEM_CLOSE + REQUEST])
    )


def _whole_word_span(value: str, source: str) -> bool:
    return re.search(r"(?<![A-Za-z0-9])" + re.escape(value) + r"(?![A-Za-z0-9])", source) is not None


def test_sources_drop_the_system_preamble_and_blank_turns() -> None:
    preamble = SYSTEM_OPEN + "Tools: ground(image_id, phrase)" + SYSTEM_CLOSE
    assert copy_sources([preamble + "Find it.", "  ", "Edit #2: make it blue"]) == ["Find it.", "Edit #2: make it blue"]


def test_detects_open_free_text_values(processor: CopyArguments) -> None:
    assert processor.open_value(OPEN_CALL) == ""
    assert processor.open_value(OPEN_CALL + "the small r") == "the small r"
    assert processor.open_value(OPEN_CALL + 'the small"}}') is None  # closed
    assert processor.open_value(OPEN_CALL + 'the"}}</tool_call> and "phrase": "x') is None  # call closed
    assert processor.open_value('<tool_call>{"name": "ground", "args": {"image_id": "#') is None  # not free text
    assert processor.open_value('"phrase": "the') is None  # outside a tool call
    assert set(FREE_TEXT_ARGUMENTS) == {"phrase", "instruction", "prompt", "query"}


def test_options_keep_whole_word_spans(processor: CopyArguments) -> None:
    pieces = processor.pieces
    extend, close = processor.options("")
    assert close is None  # an empty value cannot end
    for token_id in extend.tolist():  # every start is at a word of the request, never a space or quote
        piece = pieces[token_id]
        assert piece and not piece[0].isspace() and '"' not in piece
        assert processor._spans(piece)
    extend, close = processor.options("the small re")
    assert close is None  # "re" is not a whole word
    assert all(REQUEST.find("the small re" + pieces[i]) >= 0 for i in extend.tolist())
    extend, close = processor.options("the small red")
    assert close is not None and all('"' in pieces[i] for i in close.tolist())
    assert processor.options("the blue")[0] is None and processor.options("the blue")[1] is None  # not in the request


def test_outside_values_the_logits_are_untouched(processor: CopyArguments, tokenizer: SeedXTokenizer) -> None:
    logits = torch.randn(len(tokenizer))
    for text in ("Here is the answer.", '<tool_call>{"name": "gro', OPEN_CALL + 'the small red"}}</tool_call>'):
        assert torch.equal(processor(tokenizer.encode(text), logits), logits)
    empty = CopyArguments(tokenizer, [])
    assert torch.equal(empty(tokenizer.encode(OPEN_CALL), logits), logits)


def test_the_model_decides_between_closing_and_going_on(processor: CopyArguments, tokenizer: SeedXTokenizer) -> None:
    generated = tokenizer.encode(OPEN_CALL + "the small red")
    extend, close = processor.options("the small red")
    quote = tokenizer.encode('"')[-1]
    logits = torch.zeros(len(tokenizer))
    logits[quote] = 30.0  # closing is by far the most likely
    out = processor(generated, logits)
    assert torch.isfinite(out).sum() == len(close) and out[quote] == 30.0
    logits = torch.zeros(len(tokenizer))
    logits[tokenizer.encode("blue")[-1]] = 30.0  # going on (with a word the request lacks) is most likely
    out = processor(generated, logits)
    kept = torch.isfinite(out).nonzero().flatten().tolist()
    assert sorted(kept) == sorted(extend.tolist())  # continue, but only inside the request


@pytest.mark.parametrize("seed", range(8))
def test_greedy_decoding_under_the_constraint_copies_a_span(
    processor: CopyArguments, tokenizer: SeedXTokenizer, seed: int
) -> None:
    """Property: whatever the (random) model prefers, the value it ends up writing is a whole-word span."""
    generator = torch.Generator().manual_seed(seed)
    generated = tokenizer.encode(OPEN_CALL)
    for _ in range(60):
        logits = torch.randn(len(tokenizer), generator=generator) * 4
        token = int(processor(generated, logits).argmax())
        generated.append(token)
        if '"' in (processor.pieces[token] or ""):
            break
    text = tokenizer.decode(generated)
    value = json.loads(text[text.rindex(': "') + 2 : text.rindex('"') + 1])
    assert value and _whole_word_span(value, REQUEST), value


def test_the_bundled_planner_quotes_the_request_when_constrained() -> None:
    """On held-out agent dialogs (the bundled miniature), every free-text argument of a constrained call is a
    whole-word span of the request, and the constraint changes only what lies inside those strings."""
    from seedx_agent.miniature.eval_model import _run_agent, heldout_dialogs
    from seedx_agent.model import SeedX

    model = SeedX.load("mini", variants=("seed-x-i",))
    checked = 0
    for dialog in heldout_dialogs(12, seed=3):
        if dialog.kind not in ("ground", "edit", "generate", "recall"):
            continue
        record = _run_agent(model, dialog, copy_arguments=True)
        request = record["request"].split(SYSTEM_CLOSE)[-1]  # as the model sees it: image ids as #N handles
        for key, value in re.findall(r'"(' + "|".join(FREE_TEXT_ARGUMENTS) + r')": "([^"]*)"', record["call"]):
            assert _whole_word_span(value, request), (key, value, request)
            checked += 1
    assert checked >= 4
