"""Run a model on held-out world samples and score every ability (``seedx-agent eval mini``).

Samples come from ``make_dataset("heldout", ...)``: seeds the training run never draws. Text answers
are compared after normalisation, boxes by IoU, images by pixel analysis (``evaluate.py``); nothing
here looks at the model's internals, so any ``SeedX`` (trained, random, converted) can be scored.
"""

from __future__ import annotations

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

__all__ = ["EVAL_TASKS", "evaluate_model"]

EVAL_TASKS: tuple[str, ...] = ("caption", "vqa", "grounding", "text_to_image", "edit", "reconstruction")
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
) -> Report:
    """Score ``model`` (a ``SeedX``) on ``n`` held-out samples per task; returns the filled ``Report``.

    ``on_sample(task, index, record)`` sees every prediction (for dumping examples or debugging).
    """
    unknown = [t for t in tasks if t not in EVAL_TASKS]
    if unknown:
        raise ConfigError(f"unknown evaluation task(s) {unknown}; choose from {list(EVAL_TASKS)}")
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
        source_task = "caption" if task == "reconstruction" else task
        samples = world.make_dataset("heldout", n, source_task, seed, image_size=INPUT_SIZE)
        for index, sample in enumerate(samples):
            record = _run_one(model, task, sample, index, render_kwargs)
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


def _run_one(model: Any, task: str, sample: Any, index: int, render_kwargs: dict[str, Any]) -> dict[str, Any]:
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
