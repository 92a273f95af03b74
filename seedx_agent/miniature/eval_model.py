"""Run a model on held-out world samples and score every ability (``seedx-agent eval mini``).

Samples come from ``make_dataset("heldout", ...)``: seeds the training run never draws. Text answers
are compared after normalisation, boxes by IoU, images by pixel analysis (``evaluate.py``); nothing
here looks at the model's internals, so any ``SeedX`` (trained, random, converted) can be scored.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from seedx_agent.errors import ConfigError
from seedx_agent.miniature import world
from seedx_agent.miniature.evaluate import (
    Report,
    score_edit,
    score_generation,
    score_grounding,
    score_reconstruction,
    score_text,
)
from seedx_agent.miniature.tool_dialogs import DIALOG_KINDS, SEEDX_TOOL_SPECS, ToolDialog
from seedx_agent.model import ChatMessage
from seedx_agent.pipeline.decoding import GenerationOptions
from seedx_agent.protocol.copy_arguments import CopyArguments
from seedx_agent.protocol.tool_calls import COMPACT_MAX_NEW_TOKENS, TOOL_CALL_CLOSE, TOOL_CALL_OPEN

__all__ = ["ALL_TASKS", "EVAL_TASKS", "WORKFLOW_TASKS", "evaluate_model", "heldout_dialogs"]

EVAL_TASKS: tuple[str, ...] = ("caption", "vqa", "grounding", "text_to_image", "edit", "reconstruction", "agent")
# The workflows (refine, story, slides: seedx_agent.miniature.eval_workflows) run only when asked for: slower.
WORKFLOW_TASKS: tuple[str, ...] = ("refine", "story", "slides")
ALL_TASKS: tuple[str, ...] = EVAL_TASKS + WORKFLOW_TASKS
INPUT_SIZE = 64  # world renders given to the model (the miniature ViT's crop size)


def evaluate_model(
    model: Any,
    *,
    n: int = 50,
    seed: int = 0,
    tasks: Sequence[str] = EVAL_TASKS,
    num_inference_steps: int | None = None,
    scheduler: str = "euler",
    progress: bool = True,
    on_sample: Callable[[str, int, dict[str, Any]], None] | None = None,
    copy_arguments: bool = True,
) -> Report:
    """Score ``model`` (a ``SeedX``) on ``n`` held-out samples per task; returns the filled ``Report``.

    ``on_sample(task, index, record)`` sees every prediction (for dumping examples or debugging).
    ``copy_arguments``: the agent task's planner turns decode with ``CopyArguments``, as ``ChatSeedX`` does by
    default for compact-protocol models; False scores the unconstrained model.
    """
    unknown = [t for t in tasks if t not in ALL_TASKS]
    if unknown:
        raise ConfigError(f"unknown evaluation task(s) {unknown}; choose from {list(ALL_TASKS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    report = Report()
    render_kwargs = {"num_inference_steps": num_inference_steps, "scheduler": scheduler}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n * len(tasks), desc="eval", unit="sample", dynamic_ncols=True)
    for task in tasks:
        started = time.perf_counter()
        if task in WORKFLOW_TASKS:
            from seedx_agent.miniature.eval_workflows import run_workflow_task

            run_workflow_task(
                model,
                task,
                n=n,
                seed=seed,
                report=report,
                num_inference_steps=num_inference_steps,
                on_sample=on_sample,
                advance=bar.update if bar is not None else None,
            )
            report.add(task, "seconds_per_sample", (time.perf_counter() - started) / n)
            continue
        source_task = "caption" if task == "reconstruction" else task
        if task == "agent":
            samples = heldout_dialogs(n, seed)
        else:
            samples = world.make_dataset("heldout", n, source_task, seed, image_size=INPUT_SIZE)
        for index, sample in enumerate(samples):
            record = _run_one(model, task, sample, index, render_kwargs, copy_arguments)
            scores = record.pop("scores")
            report.add_scores(task, scores)
            if on_sample is not None:
                on_sample(task, index, {**record, "scores": scores})
            if bar is not None:
                bar.update(1)
        report.add(task, "seconds_per_sample", (time.perf_counter() - started) / n)
    if bar is not None:
        bar.close()
    return report


def heldout_dialogs(n: int, seed: int = 0) -> list[ToolDialog]:
    """``n`` agent dialogs from held-out world seeds, the dialog kinds in turn (equal counts per kind)."""
    kinds = sorted(DIALOG_KINDS)
    split = world.SPLITS["heldout"]
    return [DIALOG_KINDS[kinds[i % len(kinds)]](random.Random(split.sample_seed(i, seed) * 101 + 17)) for i in range(n)]


def _planner_turn(model: Any, conversation: Sequence[str], copy_arguments: bool) -> str:
    """The model's next turn after ``conversation`` (alternating user/assistant texts, user last), greedy."""
    roles = ["user", "assistant"] * len(conversation)
    messages = [ChatMessage(role, text) for role, text in zip(roles, conversation, strict=False)]
    options = GenerationOptions(max_new_tokens=COMPACT_MAX_NEW_TOKENS)  # as the chat agent's planner
    processor = None
    if copy_arguments:  # as ChatSeedX: free-text arguments quote the user's turns
        processor = CopyArguments.for_chat(model.tokenizer, messages, SEEDX_TOOL_SPECS)
    return model.chat(messages, options=options, render_images=False, logits_processor=processor).raw_text.strip()


def _call_of(text: str) -> tuple[str, dict[str, Any]] | None:
    """(name, args) of ``text`` when it is exactly one well-formed tool call, else None."""
    if not (text.startswith(TOOL_CALL_OPEN) and text.endswith(TOOL_CALL_CLOSE)):
        return None
    try:
        body = json.loads(text[len(TOOL_CALL_OPEN) : -len(TOOL_CALL_CLOSE)])
    except json.JSONDecodeError:
        return None
    if not isinstance(body, dict) or set(body) != {"name", "args"} or not isinstance(body["args"], dict):
        return None
    return body["name"], body["args"]


def _run_agent(model: Any, dialog: ToolDialog, copy_arguments: bool) -> dict[str, Any]:
    """Planner step 1 (request -> tool call) and step 2 (tool result -> answer), each from the true context."""
    answer_turns = dialog.conversation(through_answer=True)
    call_turns = answer_turns[:2]  # request, call: the same texts (and handles) as conversation(through_answer=False)
    call = _planner_turn(model, call_turns[:-1], copy_arguments)
    answer = _planner_turn(model, answer_turns[:-1], copy_arguments)
    call_ok = _call_of(call) == _call_of(call_turns[-1])  # ids as the #N handles the model sees
    answer_ok = answer == answer_turns[-1]
    scores = {
        "call_ok": call_ok,
        "answer_ok": answer_ok,
        f"call_ok_{dialog.kind}": call_ok,
        f"answer_ok_{dialog.kind}": answer_ok,
    }
    return {"request": call_turns[0], "call": call, "answer": answer, "target": answer_turns[-1], "scores": scores}


def _run_one(
    model: Any, task: str, sample: Any, index: int, render_kwargs: dict[str, Any], copy_arguments: bool = True
) -> dict[str, Any]:
    if task == "agent":
        return _run_agent(model, sample, copy_arguments)
    if task == "caption":
        answer = model.comprehend(world.render(sample.scene, INPUT_SIZE), world.CAPTION_QUESTION)
        return {
            "pred": answer.text,
            "target": sample.caption,
            "scores": {"accuracy": bool(score_text(answer.text, sample.caption))},
        }
    if task == "vqa":
        answer = model.comprehend(world.render(sample.scene, INPUT_SIZE), sample.question)
        ok = bool(score_text(answer.text, sample.answer))
        return {
            "question": sample.question,
            "pred": answer.text,
            "target": sample.answer,
            "scores": {"accuracy": ok, f"accuracy_{sample.category}": ok},
        }
    if task == "grounding":
        result = model.ground(world.render(sample.scene, INPUT_SIZE), sample.phrase)
        scores = score_grounding(result.box, sample.box)
        return {"phrase": sample.phrase, "pred": result.raw_text, "target": sample.box, "scores": scores}
    if task == "text_to_image":
        out = model.generate_image(sample.prompt, seed=index, **render_kwargs)
        scores = score_generation(out.image, sample.scene, check_size=sample.mentions_size)
        return {"prompt": sample.prompt, "image": out.image, "scores": scores}
    if task == "edit":
        source = world.render(sample.source, INPUT_SIZE)
        out = model.edit_image(source, sample.instruction, seed=index, **render_kwargs)
        scores = score_edit(out.image, sample.source, sample.target)
        return {"instruction": sample.instruction, "image": out.image, "scores": scores}
    image = model.reconstruct(world.render(sample.scene, INPUT_SIZE), seed=index, **render_kwargs)
    return {"image": image, "scores": score_reconstruction(image, sample.scene)}
