"""Graph inputs with missing or malformed fields fail fast with typed errors and change nothing.

Graphs are built by other work in ``graphs/``; each case skips (with the reason) only if its module is absent.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from reliability_helpers import tree_snapshot
from seedx_agent.memory import ImageMemory, InvalidImageIdError

from seedx_agent.engine import SeedXEngine
from seedx_agent.errors import ConfigError, InvalidPromptError
from seedx_agent.miniature.planners import WorldPlanner


def _graph_module(name: str):
    try:
        return importlib.import_module(f"seedx_agent.graphs.{name}")
    except ModuleNotFoundError as error:
        if error.name == f"seedx_agent.graphs.{name}":
            pytest.skip(f"seedx_agent.graphs.{name} does not exist yet")
        raise


STORY_CASES = [
    ("no premise", {}, InvalidPromptError, ["premise must be a non-empty string"]),
    ("blank premise", {"premise": "  "}, InvalidPromptError, ["premise must be a non-empty string"]),
    ("premise not a string", {"premise": 3}, InvalidPromptError, ["premise"]),
    ("zero steps", {"premise": "a red circle", "steps": 0}, ConfigError, ["steps"]),
    ("negative seed", {"premise": "a red circle", "base_seed": -1}, ConfigError, ["base_seed"]),
    (
        "path as input id",
        {"premise": "a red circle", "input_image_ids": ["../../etc/passwd"]},
        InvalidImageIdError,
        ["not an image id"],
    ),
]


@pytest.mark.parametrize(("label", "inputs", "error_type", "words"), STORY_CASES, ids=[c[0] for c in STORY_CASES])
def test_story_graph_bad_inputs(
    engine: SeedXEngine, memory: ImageMemory, tmp_path: Path, label: str, inputs: dict, error_type: type, words: list
) -> None:
    story = _graph_module("story")
    out = tmp_path / "story"
    graph = story.create_story_graph(
        engine, memory, planner=WorldPlanner(), steps=1, out_dir=out, num_inference_steps=1
    )
    count = memory.count()
    with pytest.raises(error_type) as caught:
        graph.invoke(inputs)
    for word in words:
        assert word in str(caught.value)
    assert memory.count() == count and not out.exists()


REFINE_CASES = [
    ("no request", {}, InvalidPromptError, ["refine request is empty"]),
    ("blank request", {"request": " "}, InvalidPromptError, ["refine request is empty"]),
    ("request not a string", {"request": ["a red circle"]}, InvalidPromptError, ["refine request is empty"]),
    ("nothing checkable", {"request": "a happy mood"}, InvalidPromptError, ["nothing to check", "open-vocabulary"]),
]


@pytest.mark.parametrize(("label", "inputs", "error_type", "words"), REFINE_CASES, ids=[c[0] for c in REFINE_CASES])
def test_refine_graph_bad_inputs(
    engine: SeedXEngine, memory: ImageMemory, label: str, inputs: dict, error_type: type, words: list
) -> None:
    refine = _graph_module("refine")
    graph = refine.create_refine_graph(engine, memory, planner=WorldPlanner(), max_rounds=0, num_inference_steps=1)
    count, files = memory.count(), tree_snapshot(memory.root / "images")
    with pytest.raises(error_type) as caught:
        graph.invoke(inputs)
    for word in words:
        assert word in str(caught.value)
    assert memory.count() == count and tree_snapshot(memory.root / "images") == files


@pytest.mark.parametrize("seed", ["seven", 1.5, -1, True])
def test_refine_graph_malformed_seed(engine: SeedXEngine, memory: ImageMemory, seed: object) -> None:
    refine = _graph_module("refine")
    graph = refine.create_refine_graph(engine, memory, planner=WorldPlanner(), max_rounds=0, num_inference_steps=1)
    count = memory.count()
    with pytest.raises(ConfigError, match="seed"):
        graph.invoke({"request": "a red circle", "seed": seed})
    assert memory.count() == count


def test_chat_agent_refuses_planner_without_tools(engine: SeedXEngine) -> None:
    chat_agent = _graph_module("chat_agent")
    with pytest.raises(ConfigError, match="at least one tool"):
        chat_agent.create_chat_agent(object(), [])  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["maybe", {"approved": "yes"}, {"approved": True, "extra": 1}, 3])
def test_chat_agent_review_decisions_must_be_well_formed(value: object) -> None:
    chat_agent = _graph_module("chat_agent")
    with pytest.raises(ConfigError, match="cannot read the review decision"):
        chat_agent.parse_decision(value)
