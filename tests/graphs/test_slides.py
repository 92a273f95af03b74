"""The slides graph on tiny-random: a free-form topic planned by a scripted chat model reaches the pictures'
prompts, the deck's text and notes and memory lineage; critique -> planner fix -> edit or redraw; recall and
edit of a stored picture; bad planner output repaired once, then a typed error with nothing written; the
world plug-in's outline (no edit instruction shown as a bullet)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from PIL import Image
from pptx import Presentation
from pptx.enum.shapes import MSO_SHAPE_TYPE
from seedx_agent.graphs.planning import PlannerOutputError
from seedx_agent.graphs.scripted import ScriptedPlanner
from seedx_agent.graphs.slides import create_slides_graph
from seedx_agent.memory import ImageMemory
from seedx_agent.tools import memory_image_embedder

from seedx_agent.engine import SeedXEngine
from seedx_agent.errors import ConfigError, InvalidPromptError
from seedx_agent.miniature import world
from seedx_agent.miniature.planners import WorldPlanner
from seedx_agent.model import SeedX

OUTLINE = {
    "slides": [
        {
            "title": "How tides work",
            "bullets": ["The moon pulls the oceans", "Two high tides a day"],
            "layout": "title",
            "picture_prompt": "the moon above a calm sea at night",
            "notes": "Open with the moon.",
        },
        {
            "title": "Spring and neap tides",
            "bullets": ["Sun and moon aligned: spring tides", "At right angles: neap tides"],
            "layout": "picture_left",
            "picture_prompt": "a diagram of the sun, the earth and the moon in a line",
            "notes": "Point at the alignment.",
            "checks": [{"kind": "ask", "query": "Is the moon in the picture?", "expect": "yes"}],
        },
    ]
}


class RecordingEngine(SeedXEngine):
    """A real engine that records prompts, edit instructions and questions."""

    def reset(self) -> None:
        self.prompts: list[str] = []
        self.edits: list[str] = []
        self.questions: list[str] = []

    def generate_image(self, prompt: str, **kwargs: Any) -> Any:
        self.prompts.append(prompt)
        return super().generate_image(prompt, **kwargs)

    def edit_image(self, image: Any, instruction: str, **kwargs: Any) -> Any:
        self.edits.append(instruction)
        return super().edit_image(image, instruction, **kwargs)

    def comprehend(self, image: Any, question: Any, **kwargs: Any) -> Any:
        self.questions.append(question)
        return super().comprehend(image, question, **kwargs)


@pytest.fixture(scope="module")
def engine() -> RecordingEngine:
    return RecordingEngine(SeedX.from_pretrained("tiny-random", variants=("seed-x-i", "seed-x-edit")))


@pytest.fixture
def memory(engine: RecordingEngine, tmp_path: Path) -> Iterator[ImageMemory]:
    engine.reset()
    with ImageMemory.open(tmp_path / "memory", image_embedder=memory_image_embedder(engine)) as opened:
        yield opened


def pictures_per_slide(path: Path) -> list[int]:
    deck = Presentation(str(path))
    return [sum(shape.shape_type == MSO_SHAPE_TYPE.PICTURE for shape in slide.shapes) for slide in deck.slides]


def deck_text(path: Path) -> list[str]:
    return [
        " ".join(shape.text_frame.text for shape in slide.shapes if shape.has_text_frame)
        for slide in Presentation(str(path)).slides
    ]


def test_free_form_topic_reaches_pictures_deck_and_lineage(
    engine: RecordingEngine, memory: ImageMemory, tmp_path: Path
) -> None:
    fixes = [
        AIMessage('{"action": "edit", "instruction": "make the moon bigger"}'),
        AIMessage('{"action": "regenerate", "instruction": "the sun, the earth and the moon in one line, a diagram"}'),
    ]
    planner = ScriptedPlanner(turns=[AIMessage(json.dumps(OUTLINE)), *fixes])
    out = tmp_path / "deck"
    graph = create_slides_graph(
        engine, memory, planner=planner, out_dir=out, n_slides=2, max_refine=1, num_inference_steps=2
    )
    final = graph.invoke({"topic": "how tides work", "deck_id": "tides"})

    # the planner's picture prompts and fixes reached the model; its checks (or the default one) were asked
    assert engine.prompts[:2] == [s["picture_prompt"] for s in OUTLINE["slides"]]
    assert engine.edits == ["make the moon bigger"]
    assert engine.prompts[2] == "the sun, the earth and the moon in one line, a diagram"
    assert "Does the picture show the moon above a calm sea at night? Answer yes or no." in engine.questions
    assert "Is the moon in the picture?" in engine.questions

    first, second = final["slides"]
    assert [len(s["critiques"]) for s in final["slides"]] == [2, 2] and not first["passed"]  # random weights
    assert first["mode"] == "generated, then edit (make the moon bigger)"
    edited = memory.get(first["image_id"], namespace="slides/tides")
    assert edited.parent_id == first["critiques"][0]["image_id"] and edited.operation == "slides-refine-edit"
    assert edited.prompt == "the moon above a calm sea at night" and edited.caption == "How tides work"
    assert memory.count("slides/tides") == 4

    # the deck: every title and bullet, notes with the planner's notes and the picture's sources, one picture each
    assert pictures_per_slide(Path(final["pptx"])) == [1, 1]
    text = deck_text(Path(final["pptx"]))
    assert "How tides work" in text[0] and "The moon pulls the oceans" in text[0] and "Two high tides a day" in text[0]
    assert "At right angles: neap tides" in text[1]
    notes = [s.notes_slide.notes_text_frame.text for s in Presentation(final["pptx"]).slides]
    assert notes[0].startswith("Open with the moon.") and first["image_id"] in notes[0]
    assert "Edited from: " + edited.parent_id in notes[0] and "0/1 checks passed" in notes[0]
    assert second["image_id"] in notes[1] and "Prompt: a diagram of the sun" in notes[1]
    for preview in final["previews"]:
        with Image.open(preview) as image:
            assert image.size == (960, 540)


def test_recalled_picture_is_edited_for_the_slide(engine: RecordingEngine, memory: ImageMemory, tmp_path: Path) -> None:
    stored = memory.add(
        Image.new("RGB", (32, 32), "navy"), kind="input", namespace="slides/library", prompt="a night sea"
    )
    outline = {
        "slides": [
            {
                "title": "Night",
                "bullets": ["dark water"],
                "picture_prompt": "a night sea with a full moon",
                "recall_query": "a night sea",
                "edit_instruction": "add a full moon",
            }
        ]
    }
    planner = ScriptedPlanner(turns=[AIMessage(json.dumps(outline))])
    graph = create_slides_graph(
        engine, memory, planner=planner, out_dir=tmp_path / "d", n_slides=1, max_refine=0, num_inference_steps=2
    )
    (slide,) = graph.invoke({"topic": "the sea at night"})["slides"]
    assert slide["mode"] == "recalled+edited" and engine.edits == ["add a full moon"] and engine.prompts == []
    assert memory.get(slide["image_id"]).parent_id == stored.id
    assert memory.get(slide["image_id"]).prompt == "a night sea with a full moon"  # recallable by what it shows


def test_bad_planner_output_twice_writes_nothing(engine: RecordingEngine, memory: ImageMemory, tmp_path: Path) -> None:
    three = {"slides": OUTLINE["slides"] + OUTLINE["slides"][:1]}
    planner = ScriptedPlanner(turns=[AIMessage("Slides: intro, body, end"), AIMessage(json.dumps(three))])
    out = tmp_path / "never"
    graph = create_slides_graph(engine, memory, planner=planner, out_dir=out, n_slides=2, num_inference_steps=2)
    with pytest.raises(PlannerOutputError, match="exactly 2"):
        graph.invoke({"topic": "how tides work"})
    assert memory.count() == 0 and not out.exists() and engine.prompts == []


def test_world_plugin_outline(engine: RecordingEngine, memory: ImageMemory, tmp_path: Path) -> None:
    graph = create_slides_graph(
        engine, memory, planner=WorldPlanner(), out_dir=tmp_path / "w", n_slides=3, max_refine=0, num_inference_steps=2
    )
    final = graph.invoke({"topic": "red circles", "base_seed": 4})
    slides = final["slides"]
    assert slides[0]["layout"] == "title" and slides[0]["title"] == "red circles"
    for slide in slides:
        assert all(set(world.text_words(b)) <= set(world.VOCABULARY) for b in slide["bullets"])
        assert not any(b.split()[0] in {"make", "move", "add", "remove"} for b in slide["bullets"])  # no edit text
        assert slide["checks"] and all(c["kind"] == "ground" for c in slide["checks"])
    assert all(s["notes"].startswith("What changed since the previous slide: ") for s in slides[1:])
    assert pictures_per_slide(Path(final["pptx"])) == [1, 1, 1]


def test_bad_inputs(engine: RecordingEngine, memory: ImageMemory, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="n_slides"):
        create_slides_graph(engine, memory, planner=WorldPlanner(), out_dir=tmp_path, n_slides=0)
    with pytest.raises(ConfigError, match="max_refine"):
        create_slides_graph(engine, memory, planner=WorldPlanner(), out_dir=tmp_path, max_refine=-1)
    graph = create_slides_graph(engine, memory, planner=WorldPlanner(), out_dir=tmp_path)
    with pytest.raises(InvalidPromptError, match="topic"):
        graph.invoke({"topic": ""})
