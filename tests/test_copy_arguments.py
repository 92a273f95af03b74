"""CopyArguments: free-text tool arguments become whole-word spans of the user's turns; nothing else changes."""

from __future__ import annotations

import json
import re

import pytest
import torch

from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.protocol.copy_arguments import FREE_TEXT_ARGUMENTS, TOOL_NAME, CopyArguments, copy_sources
from seedx_agent.protocol.tool_calls import SYSTEM_CLOSE, SYSTEM_OPEN

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
    assert processor.open_value(OPEN_CALL) == ("phrase", "")
    assert processor.open_value(OPEN_CALL + "the small r") == ("phrase", "the small r")
    assert processor.open_value(OPEN_CALL + 'the small"}}') is None  # closed
    assert processor.open_value(OPEN_CALL + 'the"}}</tool_call> and "phrase": "x') is None  # call closed
    assert processor.open_value('<tool_call>{"name": "ground", "args": {"image_id": "#') is None  # not free text
    assert processor.open_value('"phrase": "the') is None  # outside a tool call
    assert set(FREE_TEXT_ARGUMENTS) == {"phrase", "instruction", "prompt", "query", "question"}


def test_options_keep_whole_word_spans(processor: CopyArguments) -> None:
    pieces = processor.pieces
    extend, close = processor.options("phrase", "")
    assert close is None  # an empty value cannot end
    for token_id in extend.tolist():  # every start is at a word of the request, never a space or quote
        piece = pieces[token_id]
        assert piece and not piece[0].isspace() and '"' not in piece
        assert processor._spans("phrase", piece)
    extend, close = processor.options("phrase", "the small re")
    assert close is None  # "re" is not a whole word
    assert all(REQUEST.find("the small re" + pieces[i]) >= 0 for i in extend.tolist())
    extend, close = processor.options("phrase", "the small red")
    assert close is not None and all('"' in pieces[i] for i in close.tolist())
    assert processor.options("phrase", "the blue") == (None, None)  # not in the request
    # "question" also takes the protocol's fixed description question, whole
    assert processor.options("question", "describe the")[0] is not None
    assert processor.options("question", "describe the picture")[1] is not None
    assert processor.options("question", "describe the")[1] is None


def test_outside_tool_calls_the_logits_are_untouched(processor: CopyArguments, tokenizer: SeedXTokenizer) -> None:
    logits = torch.randn(len(tokenizer))
    for text in ("Here is the answer.", OPEN_CALL + 'the small red"}}</tool_call> Done'):
        assert torch.equal(processor(tokenizer.encode(text), logits), logits)
    loose = CopyArguments(tokenizer, [REQUEST], json_structure=False)
    assert torch.equal(loose(tokenizer.encode('<tool_call>{"name": "gro'), logits), logits)  # not a free-text value


def _kept_texts(processor: CopyArguments, tokenizer: SeedXTokenizer, text: str) -> set[str]:
    out = processor(tokenizer.encode(text), torch.zeros(len(tokenizer)))
    return {processor.pieces[i] for i in torch.isfinite(out).nonzero().flatten().tolist()}


def test_open_calls_stay_well_formed_json(processor: CopyArguments, tokenizer: SeedXTokenizer) -> None:
    after_value = _kept_texts(processor, tokenizer, OPEN_CALL + 'the small red"')
    assert after_value and all(piece.lstrip()[:1] in ("", ",", "}") for piece in after_value)  # no ": " after a value
    assert not any(piece.strip().startswith("}}}") for piece in after_value)  # at most the two open braces
    closed = _kept_texts(processor, tokenizer, OPEN_CALL + 'the small red"}}')
    assert closed and all(("</tool_call>" + "x").startswith(piece.lstrip()) or piece.isspace() for piece in closed)
    assert "}" not in closed and "<" in closed  # the object is complete: only the closing tag may follow
    in_tag = _kept_texts(processor, tokenizer, OPEN_CALL + 'the small red"}}</tool')
    assert in_tag and all("_call>".startswith(piece) for piece in in_tag)
    keys = _kept_texts(processor, tokenizer, '<tool_call>{"name": "ground", ')
    assert keys and all(piece.lstrip()[:1] in ("", '"') for piece in keys)  # a key must be a string
    broken = tokenizer.encode('<tool_call>{"name": ground')  # already invalid: nothing sensible to force
    logits = torch.randn(len(tokenizer))
    assert torch.equal(processor(broken, logits), logits)


def test_the_model_decides_between_closing_and_going_on(processor: CopyArguments, tokenizer: SeedXTokenizer) -> None:
    generated = tokenizer.encode(OPEN_CALL + "the small red")
    extend, close = processor.options("phrase", "the small red")
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

    model = SeedX.from_pretrained("mini", variants=("seed-x-i",))
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


def test_tool_name_must_be_a_bound_tool(tokenizer: SeedXTokenizer) -> None:
    processor = CopyArguments(tokenizer, [REQUEST], tool_names=["ground", "generate_image"])
    extend, close = processor.options(TOOL_NAME, "g")
    assert close is None  # "g" is no tool
    assert all(any(name.startswith("g" + processor.pieces[i]) for name in ("ground", "generate_image")) for i in extend)
    assert processor.options(TOOL_NAME, "ground")[1] is not None  # a whole name may close
    kept = processor(tokenizer.encode('<tool_call>{"name": "'), torch.zeros(len(tokenizer)))
    starts = {processor.pieces[i] for i in torch.isfinite(kept).nonzero().flatten().tolist()}
    assert starts and all("ground".startswith(p) or "generate_image".startswith(p) for p in starts)
    unnamed = CopyArguments(tokenizer, [REQUEST])  # without tool names the name is only kept valid JSON
    free = unnamed(tokenizer.encode('<tool_call>{"name": "'), torch.zeros(len(tokenizer)))
    assert torch.isfinite(free).sum() > torch.isfinite(kept).sum()
