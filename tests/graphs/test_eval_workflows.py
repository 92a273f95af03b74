"""Scorers of the workflow evaluation on hand-made pictures, the refine answer rule, and one tiny run."""

from __future__ import annotations

import pytest

from seedx_agent.miniature import world
from seedx_agent.miniature.eval_model import evaluate_model
from seedx_agent.miniature.eval_workflows import answer_after, hero_kept, scene_from_description
from seedx_agent.miniature.evaluate import score_generation
from seedx_agent.model import SeedX

HERO = world.Shape("circle", "red", "small", (0, 0))


def test_the_hero_is_read_back_from_pixels_wherever_it_moved() -> None:
    moved = world.render(world.Scene(shapes=(world.Shape("circle", "red", "small", (2, 1)),)), 64)
    assert hero_kept(moved, HERO)  # moving keeps the hero itself
    for changed in (
        world.Shape("square", "red", "small", (0, 0)),
        world.Shape("circle", "blue", "small", (0, 0)),
        world.Shape("circle", "red", "large", (0, 0)),
    ):
        assert not hero_kept(world.render(world.Scene(shapes=(changed,)), 64), HERO), changed
    with_friend = world.Scene(shapes=(HERO, world.Shape("triangle", "green", "large", (1, 1))))
    assert hero_kept(world.render(with_friend, 64), HERO)


def test_slide_text_is_read_back_into_the_scene_it_describes() -> None:
    scene = world.Scene(shapes=(HERO, world.Shape("square", "blue", "large", (2, 2))))
    parsed = scene_from_description(world.describe(scene))
    assert sorted(parsed.shapes, key=str) == sorted(scene.shapes, key=str)
    assert score_generation(world.render(scene, 64), parsed)["all_ok"]
    assert not score_generation(world.render(world.Scene(shapes=(HERO,)), 64), parsed)["all_ok"]


def test_refine_answers_with_the_version_that_passed_most_checks() -> None:
    def verdicts(passed: list[int]) -> list[dict]:
        """Verdicts whose versions passed ``passed[i]`` of four checks."""
        return [{"checks": [{"passed": i < n} for i in range(4)]} for n in passed]

    assert answer_after(verdicts([2, 1, 1, 3]), 0) == 0
    assert answer_after(verdicts([2, 1, 1, 3]), 2) == 0  # corrections that made it worse are not the answer
    assert answer_after(verdicts([2, 1, 1, 3]), 3) == 3 and answer_after(verdicts([2, 1, 1, 3]), 9) == 3
    assert answer_after(verdicts([1, 3, 3]), 4) == 1  # the earliest on a tie


def test_workflow_tasks_run_and_report_on_tiny_random() -> None:
    model = SeedX.from_pretrained("tiny-random", variants=("seed-x-i", "seed-x-edit"))
    report = evaluate_model(model, n=1, tasks=["refine", "story", "slides"], num_inference_steps=1, progress=False)
    values = report.to_dict()
    assert set(values["refine"]) >= {"single_shot", "refined", "refined_last", "rounds", "refined_r4", "seconds_r4"}
    assert values["refine"]["rounds"] == 3.0  # random weights never verify: the default limit is used up
    assert set(values["story"]) >= {"consistency", "beat_done"} and set(values["slides"]) >= {"picture_matches_text"}
    with pytest.raises(Exception, match="unknown evaluation task"):
        evaluate_model(model, n=1, tasks=["poetry"], progress=False)
