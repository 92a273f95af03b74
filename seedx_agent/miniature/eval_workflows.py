"""What the agent layer adds, measured on the world: refine against single-shot, story consistency, slides.

The workflows run as users run them (the real graphs, the world plug-in planner, SEED-X verifying its own
pictures), and every picture is then judged by pixel analysis against the scene the plan asked for
(``evaluate.py``), which the workflows never see. So the numbers say whether verify-and-correct helps, not
whether the model agrees with itself.

- ``refine``: held-out text-to-image prompts. ``single_shot``: the first picture has every attribute right
  (as the ``text_to_image`` task scores it, same seed); ``refined``: the graph's answer (``best_image_id``, the
  version that passed the most of SEED-X's own checks) at its default round limit; ``refined_last``: its last
  version; ``refined_rN``: the answer with at most N corrections (one run with the largest limit, cut
  at each N: the loop is deterministic, so a smaller limit would have stopped exactly there), with
  ``seconds_rN`` per prompt; ``rounds``: corrections used; ``verifier_accepts_right`` /
  ``verifier_rejects_wrong``: SEED-X's own checks on the first picture against the pixel truth.
- ``story``: held-out premises, ``STORY_BEATS`` beats each. ``consistency``: the hero's kind, colour and size
  are read back from the beat's picture; ``beat_done``: the picture shows the beat's planned scene.
- ``slides``: held-out topics; ``picture_matches_text``: the final picture shows the scene the slide's text
  describes.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from seedx_agent.engine import SeedXEngine
from seedx_agent.graphs.refine import best_version, create_refine_graph
from seedx_agent.graphs.slides import create_slides_graph
from seedx_agent.graphs.story import create_story_graph
from seedx_agent.memory import ImageMemory
from seedx_agent.miniature import world
from seedx_agent.miniature.evaluate import Report, analyse_image, score_generation
from seedx_agent.miniature.planners import WorldPlanner, initial_scene, parse_request, plan_beat
from seedx_agent.tools import memory_image_embedder

__all__ = [
    "REFINE_CURVE_ROUNDS",
    "STORY_BEATS",
    "WORKFLOW_TASKS",
    "answer_after",
    "hero_kept",
    "run_workflow_task",
    "scene_from_description",
]

WORKFLOW_TASKS: tuple[str, ...] = ("refine", "story", "slides")
REFINE_DEFAULT_ROUNDS = 3  # create_refine_graph's default
REFINE_CURVE_ROUNDS: tuple[int, ...] = (0, 1, 2, 4)
STORY_BEATS = 4
SLIDES_PER_DECK = 3
Sink = Callable[[str, int, dict[str, Any]], None]


def scene_from_description(text: str) -> world.Scene:
    """The world scene a canonical description names (``world.describe``'s inverse, via the planner's parser)."""
    shapes = []
    for facts in parse_request(text):
        cell = world.cell_of_position(facts.get("position", "center"))
        shapes.append(world.Shape(facts["kind"], facts["colour"], facts.get("size", "small"), cell))
    return world.Scene(shapes=tuple(shapes))


def hero_kept(image: Image.Image, hero: world.Shape) -> bool:
    """Whether some shape in ``image`` has the hero's kind, colour and size (it may have moved)."""
    return any(
        all(agreement[key] for key in ("kind", "colour", "size"))
        for agreement in (detection.agreement(hero) for detection in analyse_image(image))
    )


class _Workbench:
    """One engine and a scratch image memory for the workflows under evaluation."""

    def __init__(self, model: Any, root: Path, num_inference_steps: int | None) -> None:
        self.engine = SeedXEngine(model)
        self.memory = ImageMemory.open(root / "memory", image_embedder=memory_image_embedder(self.engine))
        self.root = root
        self.steps = num_inference_steps

    def picture(self, image_id: str) -> Image.Image:
        return self.memory.load(image_id)


def run_workflow_task(
    model: Any,
    task: str,
    *,
    n: int,
    seed: int,
    report: Report,
    num_inference_steps: int | None = None,
    on_sample: Sink | None = None,
    advance: Callable[[], None] | None = None,
) -> None:
    """Run ``n`` held-out samples of a workflow task and record its metrics in ``report``."""
    with tempfile.TemporaryDirectory(prefix=f"seedx-eval-{task}-") as folder:
        bench = _Workbench(model, Path(folder), num_inference_steps)
        try:
            runner = {"refine": _refine, "story": _story, "slides": _slides}[task]
            runner(bench, n, seed, report, on_sample, advance or (lambda: None))
        finally:
            bench.memory.close()


def answer_after(verdicts: list[Any], rounds: int) -> int:
    """The version the refine graph answers with when stopped after ``rounds`` corrections (its own rule,
    ``best_version``, over the verdicts it would have seen)."""
    return best_version(verdicts[: min(rounds, len(verdicts) - 1) + 1])


def _refine(bench: _Workbench, n: int, seed: int, report: Report, on_sample: Sink | None, advance: Any) -> None:
    limit = max(REFINE_CURVE_ROUNDS)
    graph = create_refine_graph(
        bench.engine, bench.memory, planner=WorldPlanner(), max_rounds=limit, num_inference_steps=bench.steps
    )
    samples = world.make_dataset("heldout", n, "text_to_image", seed, image_size=64)
    for index, sample in enumerate(samples):
        started = time.perf_counter()
        reached: list[float] = []  # seconds at which each version had been verified
        final: dict[str, Any] = {}
        for mode, chunk in graph.stream({"request": sample.prompt, "seed": index}, stream_mode=["custom", "values"]):
            if mode == "values":
                final = chunk
            elif chunk.get("event") == "verify_end":
                reached.append(time.perf_counter() - started)
        ok = [
            score_generation(bench.picture(v["image_id"]), sample.scene, check_size=sample.mentions_size)["all_ok"]
            for v in final["versions"]
        ]
        default = min(REFINE_DEFAULT_ROUNDS, len(ok) - 1)
        scores: dict[str, float | bool] = {
            "single_shot": ok[0],
            "refined": ok[answer_after(final["verdicts"], REFINE_DEFAULT_ROUNDS)],
            "refined_last": ok[default],
            "rounds": float(default),
            "verified": bool(final["verified"]) and final["round"] <= REFINE_DEFAULT_ROUNDS,
        }
        # The verifier itself, judged by pixels on the first picture: does it accept right ones, reject wrong ones?
        first_accepted = all(check["passed"] for check in final["verdicts"][0]["checks"])
        if ok[0]:
            scores["verifier_accepts_right"] = first_accepted
        else:
            scores["verifier_rejects_wrong"] = not first_accepted
        for rounds in REFINE_CURVE_ROUNDS:
            scores[f"refined_r{rounds}"] = ok[answer_after(final["verdicts"], rounds)]
            scores[f"seconds_r{rounds}"] = reached[min(rounds, len(reached) - 1)]
        report.add_scores("refine", scores)
        if on_sample is not None:
            on_sample("refine", index, {"prompt": sample.prompt, "versions": final["versions"], "scores": scores})
        advance()


def _story(bench: _Workbench, n: int, seed: int, report: Report, on_sample: Sink | None, advance: Any) -> None:
    samples = world.make_dataset("heldout", n, "text_to_image", seed, image_size=64)
    for index, sample in enumerate(samples):
        hero = sample.scene.shapes[0]
        premise = f"{hero.phrase()} {world.POSITION_PHRASES[hero.position]} looks for a friend"
        graph = create_story_graph(
            bench.engine,
            bench.memory,
            planner=WorldPlanner(),
            steps=STORY_BEATS,
            out_dir=bench.root / f"story_{index:03d}",
            num_inference_steps=bench.steps,
        )
        final = graph.invoke({"premise": premise, "base_seed": index, "story_id": f"eval-{index}"})
        scene = initial_scene(premise, index)
        beats = []
        for step, beat in enumerate(final["recent"]):
            scene = plan_beat(scene, step, index + step, has_source_image=step > 0)["scene"]
            picture = bench.picture(beat["image_id"])
            scores = {
                "consistency": hero_kept(picture, scene.shapes[0]),
                "beat_done": score_generation(picture, scene)["all_ok"],
                "checked_consistent": bool(beat["consistent"]),
            }
            report.add_scores("story", scores)
            beats.append({"text": beat["text"], "scores": scores})
        if on_sample is not None:
            on_sample("story", index, {"premise": premise, "beats": beats})
        advance()


def _slides(bench: _Workbench, n: int, seed: int, report: Report, on_sample: Sink | None, advance: Any) -> None:
    samples = world.make_dataset("heldout", n, "text_to_image", seed, image_size=64)
    for index, sample in enumerate(samples):
        topic = f"{sample.scene.shapes[0].colour} {sample.scene.shapes[0].kind}s"
        graph = create_slides_graph(
            bench.engine,
            bench.memory,
            planner=WorldPlanner(),
            out_dir=bench.root / f"deck_{index:03d}",
            n_slides=SLIDES_PER_DECK,
            recall_namespace=f"eval/{index}",
            num_inference_steps=bench.steps,
        )
        final = graph.invoke({"topic": topic, "base_seed": index})
        for slide in final["slides"]:
            scene = scene_from_description(slide["picture_prompt"])
            report.add_scores(
                "slides",
                {
                    "picture_matches_text": score_generation(bench.picture(slide["image_id"]), scene)["all_ok"],
                    "passed_own_checks": bool(slide["passed"]),
                },
            )
        if on_sample is not None:
            on_sample("slides", index, {"topic": topic, "slides": [s["title"] for s in final["slides"]]})
        advance()
