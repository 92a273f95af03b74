"""The miniature's agent-tuning dialogs are token for token what ``ChatSeedX`` renders inside the chat agent.

``seedx_agent.miniature.tool_dialogs`` needs no LangChain; here each dialog is replayed as the
LangChain messages the chat agent holds (request, AI tool call, wrapped tool result) and rendered through
``render_messages`` with the real tools bound in the compact style.
"""

from __future__ import annotations

import random

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from seedx_agent.graphs.chat_agent import mark_tool_output
from seedx_agent.memory import ImageMemory
from seedx_agent.tools import make_seedx_tools, parse_tool_calls
from seedx_agent.tools.chat_model import render_messages

from seedx_agent.config import SeedXConfig
from seedx_agent.engine import SeedXEngine
from seedx_agent.miniature.tool_dialogs import DIALOG_KINDS, SEEDX_TOOL_SPECS, ToolDialog, scramble_free_text
from seedx_agent.miniature.world_data import WorldData
from seedx_agent.model import SeedX
from seedx_agent.pipeline import prompts
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.protocol.tool_calls import IdAliases, tool_specs_text
from seedx_agent.training.samples import IGNORE_INDEX, chat_example

NAMESPACE = "user:test/thread:agent"


@pytest.fixture(scope="module")
def engine() -> SeedXEngine:
    return SeedXEngine(SeedX.from_pretrained("tiny-random", variants=("seed-x-i",)))


@pytest.fixture(scope="module")
def bound_specs(engine: SeedXEngine, memory: ImageMemory) -> list[dict]:
    return [convert_to_openai_tool(t) for t in make_seedx_tools(engine, memory, namespace=NAMESPACE)]


def test_compact_specs_match_the_real_tools(bound_specs: list[dict]) -> None:
    assert tool_specs_text(SEEDX_TOOL_SPECS, style="compact") == tool_specs_text(bound_specs, style="compact")
    assert "ground(image_id, phrase)" in tool_specs_text(bound_specs, style="compact")


def _messages(dialog: ToolDialog, call_id: str, through_answer: bool) -> list:
    messages = [HumanMessage(dialog.request)]
    if through_answer:
        call = {"name": dialog.tool, "args": dialog.args, "id": call_id, "type": "tool_call"}
        messages.append(AIMessage(content="", tool_calls=[call]))
        messages.append(mark_tool_output(ToolMessage(dialog.result, tool_call_id=call_id, name=dialog.tool)))
    return messages


@pytest.mark.parametrize("kind", sorted(DIALOG_KINDS))
@pytest.mark.parametrize("through_answer", [False, True])
@pytest.mark.parametrize("scrambled", [False, True])
def test_training_dialog_equals_the_rendered_agent_prompt(
    kind: str, through_answer: bool, scrambled: bool, memory: ImageMemory, bound_specs: list[dict]
) -> None:
    tok = SeedXTokenizer.tiny()
    config = SeedXConfig.from_preset("mini")
    dialog = DIALOG_KINDS[kind](random.Random(11))
    if scrambled:  # copy drills go through the same rendering
        dialog = scramble_free_text(dialog, random.Random(5))
    conversation = dialog.conversation(through_answer=through_answer)
    call_id = conversation[2].split("call_id=")[1].split()[0] if through_answer else "call_x"
    turns = render_messages(
        _messages(dialog, call_id, through_answer),
        memory=memory,
        namespace=NAMESPACE,
        tools=bound_specs,
        tool_specs="compact",
    )
    aliases = IdAliases()  # ChatSeedX in the compact protocol shows image ids as #N handles
    shown = [aliases.shorten(t.text) for t in turns]
    assert shown == conversation[:-1]  # every turn the planner reads
    prompt = prompts.chat_prompt(
        "seed-x-i", [prompts.Turn(t.role, text, ()) for t, text in zip(turns, shown)], config.lvlm.num_image_tokens
    )
    prompt_ids, _ = tok.encode_segments_with_mask(prompt.segments, add_bos=True)
    example = chat_example(tok, config, conversation)
    assert example.input_ids[: len(prompt_ids)] == prompt_ids
    # what follows the prompt is exactly the labelled target: the model's turn, then EOS
    target = example.labels[len(prompt_ids) :]
    assert target == example.input_ids[len(prompt_ids) :] and IGNORE_INDEX not in target
    assert tok.decode(target[:-1]) == conversation[-1] and target[-1] == tok.eos_token_id
    if not through_answer:  # the call the model learns parses back into the dialog's call
        assert "img_" not in conversation[-1]
        parsed = parse_tool_calls(aliases.expand(conversation[-1]), [s["function"]["name"] for s in bound_specs])
        assert [(c["name"], c["args"]) for c in parsed.tool_calls] == [(dialog.tool, dialog.args)]


def test_agent_batches_alternate_and_fit_the_context() -> None:
    tok, config = SeedXTokenizer.tiny(), SeedXConfig.from_preset("mini")
    data = WorldData(config, tok, seed=0)
    dialogs, tasks = data.agent_examples(0, 6, 5), data.agent_examples(2, 6, 5)
    assert len(dialogs) == 6 and len(tasks) == 5
    assert all(e.pixel_values.shape[0] == 0 for e in dialogs)  # dialogs carry ids, never pixels
    assert any(e.pixel_values.shape[0] > 0 for e in tasks)
    assert max(len(e) for e in dialogs) <= config.llm.max_position_embeddings
    assert [e.input_ids for e in data.agent_examples(0, 6, 5)] == [e.input_ids for e in dialogs]  # deterministic


@pytest.mark.parametrize("kind", sorted(DIALOG_KINDS))
def test_scrambled_dialogs_echo_one_new_text_everywhere(kind: str) -> None:
    for seed in range(20):
        dialog = DIALOG_KINDS[kind](random.Random(seed))
        drill = scramble_free_text(dialog, random.Random(seed + 100))
        assert (drill.kind, drill.tool) == (dialog.kind, dialog.tool)
        assert set(drill.args) == set(dialog.args)
        changed = [name for name in dialog.args if drill.args[name] != dialog.args[name]]
        if kind == "describe":  # fixed question; the caption the answer repeats is scrambled instead
            assert changed == [] and drill.result == drill.answer != dialog.result
            continue
        (name,) = changed  # exactly the free-text argument, the ids stay
        text = drill.args[name]
        assert text in drill.request and dialog.args[name] not in drill.request.replace(text, "")
        assert all(word.isalpha() for word in text.split()) and 2 <= len(text.split()) <= 8
        if kind in ("ground", "edit", "generate", "recall"):  # results quote the caller's words
            assert repr(text) in drill.result
        if kind == "vqa":
            assert drill.result == drill.answer
        if kind == "ground" and "Found" in dialog.answer:
            assert drill.answer.startswith(f"Found {text} at ")
