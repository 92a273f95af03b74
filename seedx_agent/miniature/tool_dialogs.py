"""Agent-tuning dialogs: the miniature learns to plan with the SEED-X tools in the compact protocol.

A dialog is one request of the chat agent (``seedx_agent.graphs.create_chat_agent`` with
``planner_window=1`` and no system prompt) as ``ChatSeedX(tool_specs="compact")`` renders it:

    user:      <<SYS>> compact tool specs <</SYS>> + request naming an image (or a prompt / query)
    assistant: <tool_call>{"name": .., "args": {..}}</tool_call>
    user:      [TOOL RESULT ..] <tool_output ..> the tool's content </tool_output> [END TOOL RESULT]
    assistant: a short answer that reports what the tool returned (ids, box, answer)

Every string comes from ``seedx_agent.protocol.tool_calls``, the module the tools and the chat model use, so the
training text equals the inference text token for token (``tests/tools/test_agent_dialogs.py`` checks it
through ``ChatSeedX``). Some dialogs stop after the call (then EOS), because at inference the call is the end
of the model's turn; the others run to the answer (``WorldData.agent_examples`` sets the share). Requests,
ids, seeds and results are drawn from the miniature world, so arguments must be copied from the request
(handles, phrases, instructions).
Image ids appear as ``#N`` handles (``tool_protocol.IdAliases``), as ``ChatSeedX`` shows them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from seedx_agent.miniature import world
from seedx_agent.protocol.tool_calls import (
    IdAliases,
    edit_result,
    format_box,
    generate_result,
    ground_result,
    quote,
    recall_result,
    system_preamble,
    tool_call_text,
    tool_result_text,
    tool_specs_text,
    wrap_tool_output,
)

__all__ = [
    "DIALOG_KINDS",
    "SEEDX_TOOL_SPECS",
    "ToolDialog",
    "random_dialog",
    "random_image_id",
    "scramble_free_text",
    "scrambled_text",
]


def _spec(name: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    properties = {arg: {} for arg in (*required, *optional)}
    parameters = {"properties": properties, "required": list(required)}
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


# The five SEED-X tools as ``make_seedx_tools`` binds them (names, argument order, required arguments); only
# what the compact spec shows. A test compares the compact text with the real tools' rendering.
SEEDX_TOOL_SPECS: tuple[dict[str, Any], ...] = (
    _spec("comprehend", ("image_ids", "question")),
    _spec("ground", ("image_id", "phrase")),
    _spec("generate_image", ("prompt",), ("seed",)),
    _spec("edit_image", ("image_id", "instruction"), ("seed",)),
    _spec("recall_images", (), ("query", "image_id", "k")),
)
RECALL_K = 2  # the miniature asks for two matches: short results keep dialogs inside its 1024 positions

DESCRIBE_REQUESTS = ("Describe {id}.", "What is in {id}?", "Describe the image {id}.")
VQA_REQUESTS = ("{question} ({id})", "Look at {id}: {question}")
GROUND_REQUESTS = ("Where is {phrase} in {id}?", "Find {phrase} in {id}.")
EDIT_REQUESTS = ("Edit {id}: {instruction}", "In {id}, {instruction}")
GENERATE_REQUESTS = ("Draw {prompt}", "Generate an image: {prompt}")
RECALL_REQUESTS = ("Find earlier images of {query}.", "Recall images of {query}.")


@dataclass(frozen=True)
class ToolDialog:
    """One request's turns: user, the call, the wrapped result block, the answer (texts as rendered)."""

    kind: str
    request: str
    tool: str
    args: dict[str, Any]
    result: str  # the tool's content (before wrapping)
    answer: str

    def conversation(self, *, through_answer: bool = True) -> list[str]:
        """Alternating user/assistant texts as the model reads and writes them (preamble included, image ids
        as ``#N`` handles, as ``ChatSeedX`` shows them in the compact protocol)."""
        first = system_preamble([tool_specs_text(SEEDX_TOOL_SPECS, style="compact")]) + self.request
        turns = [first, tool_call_text(self.tool, self.args)]
        if through_answer:
            call_id = "call_" + "".join(random.Random(self.request).choices("0123456789abcdef", k=24))
            block = tool_result_text(self.tool, call_id, "success", wrap_tool_output(self.tool, self.result))
            turns += [block, self.answer]
        aliases = IdAliases()
        return [aliases.shorten(turn) for turn in turns]


def random_image_id(rng: random.Random) -> str:
    """An id of the ``ImageMemory`` form (``img_`` + 16 hex)."""
    return "img_" + "".join(rng.choices("0123456789abcdef", k=16))


def _describe(rng: random.Random) -> ToolDialog:
    sample = world.make_sample("caption", rng)
    image_id = random_image_id(rng)
    request = rng.choice(DESCRIBE_REQUESTS).format(id=image_id)
    args = {"image_ids": [image_id], "question": world.CAPTION_QUESTION}
    return ToolDialog("describe", request, "comprehend", args, sample.caption, sample.caption)


def _vqa(rng: random.Random) -> ToolDialog:
    sample = world.make_sample("vqa", rng)
    image_id = random_image_id(rng)
    request = rng.choice(VQA_REQUESTS).format(id=image_id, question=sample.question)
    args = {"image_ids": [image_id], "question": sample.question}
    return ToolDialog("vqa", request, "comprehend", args, sample.answer, sample.answer)


def _ground(rng: random.Random) -> ToolDialog:
    sample = world.make_sample("grounding", rng)
    image_id = random_image_id(rng)
    request = rng.choice(GROUND_REQUESTS).format(id=image_id, phrase=sample.phrase)
    args = {"image_id": image_id, "phrase": sample.phrase}
    if rng.random() < 0.1:
        result = ground_result(sample.phrase, image_id, [], None)
        return ToolDialog("ground", request, "ground", args, result, f"No box found for {sample.phrase}.")
    scale = rng.choice((1, 2, 4, 8))
    box = [value * scale for value in sample.box]
    annotated = random_image_id(rng)
    result = ground_result(sample.phrase, image_id, [box], annotated)
    answer = f"Found {sample.phrase} at {format_box(box)}. Annotated copy: {annotated}."
    return ToolDialog("ground", request, "ground", args, result, answer)


def _edit(rng: random.Random) -> ToolDialog:
    sample = world.make_sample("edit", rng)
    image_id, new_id = random_image_id(rng), random_image_id(rng)
    request = rng.choice(EDIT_REQUESTS).format(id=image_id, instruction=sample.instruction)
    args = {"image_id": image_id, "instruction": sample.instruction}
    result = edit_result(image_id, sample.instruction, new_id, rng.randrange(2**31))
    return ToolDialog("edit", request, "edit_image", args, result, f"Here is the edited image: {new_id}.")


def _generate(rng: random.Random) -> ToolDialog:
    sample = world.make_sample("text_to_image", rng)
    new_id = random_image_id(rng)
    request = rng.choice(GENERATE_REQUESTS).format(prompt=sample.prompt)
    size = rng.choice((32, 64, 256))
    result = generate_result(new_id, size, size, rng.randrange(2**31), sample.prompt)
    args = {"prompt": sample.prompt}
    return ToolDialog("generate", request, "generate_image", args, result, f"Here is the new image: {new_id}.")


def _recall(rng: random.Random) -> ToolDialog:
    query = world.make_sample("text_to_image", rng).prompt
    request = rng.choice(RECALL_REQUESTS).format(query=query)
    found = [
        {
            "image_id": random_image_id(rng),
            "kind": rng.choice(("input", "generated", "edited")),
            "score": rng.uniform(0.05, 0.95),
            "prompt": rng.choice(("", world.make_sample("text_to_image", rng).prompt)),
        }
        for _ in range(rng.choice((0, 1, 2, 2)))
    ]
    found.sort(key=lambda item: -item["score"])
    result = recall_result(f"matching {quote(query)}", found)
    if not found:
        answer = "No stored image matches."
    else:
        answer = f"Best match: {found[0]['image_id']}." + (f" Also: {found[1]['image_id']}." if len(found) > 1 else "")
    return ToolDialog("recall", request, "recall_images", {"query": query, "k": RECALL_K}, result, answer)


DIALOG_KINDS: dict[str, Callable[[random.Random], ToolDialog]] = {
    "describe": _describe,
    "vqa": _vqa,
    "ground": _ground,
    "edit": _edit,
    "generate": _generate,
    "recall": _recall,
}


# The argument a request's free text goes into, per dialog kind (describe asks a fixed question).
_FREE_ARGUMENT = {"vqa": "question", "ground": "phrase", "edit": "instruction", "generate": "prompt", "recall": "query"}
_SCRAMBLE_WORDS = tuple(word for word in world.VOCABULARY if word.isalpha())


def scrambled_text(rng: random.Random, *, min_words: int = 2, max_words: int = 8) -> str:
    """Random world words in random order: text no prior can predict, so only copying reproduces it."""
    return " ".join(rng.choice(_SCRAMBLE_WORDS) for _ in range(rng.randint(min_words, max_words)))


def scramble_free_text(dialog: ToolDialog, rng: random.Random) -> ToolDialog:
    """``dialog`` with the texts the planner must copy replaced by ``scrambled_text``: the request's free text
    (everywhere it is echoed: request, call, result, answer) and, where the answer repeats the tool's content
    (describe, VQA), that content. A world phrase can be half-guessed from the world's grammar; a scrambled one
    only by copying, which is the skill the planner lacks (it wrote plausible phrases of its own instead)."""
    request, args, result, answer = dialog.request, dict(dialog.args), dialog.result, dialog.answer
    name = _FREE_ARGUMENT.get(dialog.kind)
    if name is not None:
        old, new = args[name], scrambled_text(rng)
        request, result, answer = (text.replace(old, new) for text in (request, result, answer))
        args[name] = new
    if dialog.kind in ("describe", "vqa"):
        result = answer = scrambled_text(rng, min_words=1)
    return replace(dialog, request=request, args=args, result=result, answer=answer)


def random_dialog(rng: random.Random, *, scramble: float = 0.0) -> ToolDialog:
    """A dialog of a uniformly drawn kind; a ``scramble`` share has its free text scrambled (copy drills)."""
    dialog = DIALOG_KINDS[rng.choice(list(DIALOG_KINDS))](rng)
    return scramble_free_text(dialog, rng) if rng.random() < scramble else dialog
