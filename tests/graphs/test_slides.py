"""The slides graph on a real tiny-random engine: outline, recalled+edited pictures, the critique/refine
loop, and a .pptx that python-pptx re-opens with one picture per planned slide, plus PNG previews."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from PIL import Image
from pptx import Presentation
from pptx.enum.shapes import MSO_SHAPE_TYPE
from seedx_agent.graphs.slides import create_slides_graph, plan_outline
from seedx_agent.memory import ImageMemory
from seedx_agent.tools import memory_image_embedder

from seedx_agent.engine import SeedXEngine
from seedx_agent.errors import ConfigError
from seedx_agent.miniature import world
from seedx_agent.model import SeedX


@pytest.fixture(scope="module")
def engine() -> SeedXEngine:
    return SeedXEngine(SeedX.from_preset("tiny-random", variants=("seed-x-i", "seed-x-edit")))


@pytest.fixture
def memory(engine: SeedXEngine, tmp_path: Path) -> Iterator[ImageMemory]:
    with ImageMemory.open(tmp_path / "memory", image_embedder=memory_image_embedder(engine)) as opened:
        yield opened


def pictures_per_slide(path: Path) -> list[int]:
    deck = Presentation(str(path))
    return [sum(shape.shape_type == MSO_SHAPE_TYPE.PICTURE for shape in slide.shapes) for slide in deck.slides]


def test_deck_with_critique_and_refine_loop(engine: SeedXEngine, memory: ImageMemory, tmp_path: Path) -> None:
    out = tmp_path / "deck"
    graph = create_slides_graph(engine, memory, out_dir=out, n_slides=3, max_refine=1, num_inference_steps=2)
    events: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    for mode, chunk in graph.stream({"topic": "red circles", "base_seed": 7}, stream_mode=["custom", "values"]):
        if mode == "custom":
            events.append(chunk)
        else:
            final = chunk
    plan = plan_outline("red circles", 3, seed=7)
    assert [slide["title"] for slide in final["slides"]] == [p.title for p in plan]

    # pictures: slide 0 generated, later slides recalled by text (the previous slide's picture) and edited
    modes = [e["mode"] for e in events if e["event"] == "slide_picture"]
    assert modes == ["generated", "recalled+edited", "recalled+edited"]
    first_pictures = [e["image_id"] for e in events if e["event"] == "slide_picture"]
    assert memory.get(first_pictures[1]).parent_id == first_pictures[0]
    assert memory.get(first_pictures[2]).parent_id == first_pictures[1]

    # critique/refine: random weights ground nothing, so every slide is refined max_refine times and re-judged
    kinds = [e["event"] for e in events]
    assert kinds.count("slide_critique") == 6 and kinds.count("slide_refine") == 3
    for slide in final["slides"]:
        assert not slide["passed"] and slide["attempts"] == 1 and len(slide["critiques"]) == 2
        assert slide["critiques"][0]["missing"] and slide["critiques"][0]["score"] == 0.0
        assert slide["image_id"] not in first_pictures  # the refined picture replaced the first one
        assert memory.get(slide["image_id"]).seed == 7 + final["slides"].index(slide) + 1000
    json.dumps(final)  # ids and text only

    # the deck: planned slide count, one picture each, titles; previews rendered with Pillow
    assert pictures_per_slide(Path(final["pptx"])) == [1, 1, 1]
    deck = Presentation(final["pptx"])
    assert [slide.shapes.title.text for slide in deck.slides] == [p.title for p in plan]
    assert len(final["previews"]) == 3
    for preview in final["previews"]:
        with Image.open(preview) as image:
            assert image.size == (960, 540)


def test_passing_pictures_are_not_refined(engine: SeedXEngine, memory: ImageMemory, tmp_path: Path) -> None:
    graph = create_slides_graph(
        engine, memory, out_dir=tmp_path / "deck", n_slides=1, max_refine=3, pass_score=0.0, num_inference_steps=2
    )
    final = graph.invoke({"topic": "a blue square"})
    (slide,) = final["slides"]
    assert slide["passed"] and slide["attempts"] == 0 and len(slide["critiques"]) == 1
    assert pictures_per_slide(Path(final["pptx"])) == [1]


def test_chat_model_planner(engine: SeedXEngine, memory: ImageMemory, tmp_path: Path) -> None:
    answer = {
        "slides": [
            {"title": "Intro", "bullets": ["shapes"], "layout": "title", "image_prompt": "a red circle"},
            {"title": "More", "bullets": ["a", "b"], "layout": "picture_left", "image_prompt": "a blue square"},
        ]
    }
    planner = FakeListChatModel(responses=["Here it is:\n" + json.dumps(answer)])
    graph = create_slides_graph(
        engine, memory, out_dir=tmp_path / "deck", n_slides=2, max_refine=0, planner=planner, num_inference_steps=2
    )
    final = graph.invoke({"topic": "shapes"})
    assert [slide["title"] for slide in final["slides"]] == ["Intro", "More"]
    for slide in final["slides"]:
        review = slide["critiques"][0]
        assert review["misplaced"] == [] and 0.0 <= review["score"] <= 1.0  # caption-overlap critique
    assert pictures_per_slide(Path(final["pptx"])) == [1, 1]

    bad = FakeListChatModel(responses=['{"slides": [{"title": "x"}]}'])
    graph = create_slides_graph(engine, memory, out_dir=tmp_path / "bad", n_slides=1, planner=bad)
    with pytest.raises(ConfigError, match="planner"):
        graph.invoke({"topic": "shapes"})


def test_outline_is_deterministic_world_text() -> None:
    plan = plan_outline("large green squares", 5, seed=3)
    assert plan == plan_outline("large green squares", 5, seed=3)
    assert [p.layout for p in plan] == ["title", "picture_right", "picture_left", "picture_right", "picture_left"]
    assert "a large green square" in plan[0].image_prompt
    for before, after in itertools.pairwise(plan):
        assert after.source_prompt == before.image_prompt and after.instruction == after.bullets[0]
        assert set(world.text_words(after.instruction)) <= set(world.VOCABULARY)
    with pytest.raises(ConfigError, match="n_slides"):
        plan_outline("x", 0)
