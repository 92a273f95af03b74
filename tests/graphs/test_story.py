"""The story graph on tiny-random: any planner's beats reach the pictures, memory lineage and the manifest;
bad planner output is repaired once, then refused with nothing left behind; 25 beats in bounded memory;
a crash resumes without redoing a finished beat; the miniature's world plug-in plans checkable beats."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage
from langgraph.checkpoint.memory import InMemorySaver
from PIL import Image
from seedx_agent.graphs.planning import PlannerOutputError, StoryBeat, StoryChunk
from seedx_agent.graphs.scripted import ScriptedPlanner
from seedx_agent.graphs.story import RECENT_WINDOW, create_story_graph
from seedx_agent.memory import ImageMemory
from seedx_agent.tools import memory_image_embedder

from seedx_agent.engine import SeedXEngine
from seedx_agent.errors import ConfigError, InvalidPromptError
from seedx_agent.miniature import world
from seedx_agent.miniature.planners import WorldPlanner
from seedx_agent.model import SeedX

STEPS = dict(num_inference_steps=2)
FOX = "a small orange fox with a green scarf"


class RecordingEngine(SeedXEngine):
    """A real engine that records what it was asked and can crash on its ``crash_on``-th edit."""

    crash_on: int | None = None

    def reset(self) -> None:
        self.edits: list[str] = []
        self.generations: list[tuple[str, int]] = []
        self.questions: list[str] = []

    def edit_image(self, image: Any, instruction: str, **kwargs: Any) -> Any:
        self.edits.append(instruction)
        if self.crash_on is not None and len(self.edits) == self.crash_on:
            raise RuntimeError("simulated crash")
        return super().edit_image(image, instruction, **kwargs)

    def generate_image(self, prompt: str, **kwargs: Any) -> Any:
        self.generations.append((prompt, len(kwargs.get("context", ()))))
        return super().generate_image(prompt, **kwargs)

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


class PlainPlanner:
    """A planner object without characters or checks: beat i says 'page i'; every other beat keeps the scene."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def plan(self, task: str, schema: type, request: dict[str, Any]) -> StoryChunk:
        assert task == "story_beats" and schema is StoryChunk
        self.requests.append(request)
        first = request["first_beat"]
        return StoryChunk(
            beats=[
                StoryBeat(
                    text=f"page {i} of {request['premise']}",
                    picture_prompt=f"a watercolour of page {i}",
                    same_scene=i % 2 == 1,
                    edit_instruction=f"change page {i}" if i % 2 == 1 else None,
                )
                for i in range(first, first + request["count"])
            ]
        )


def fox_chunk() -> dict[str, Any]:
    return {
        "characters": [{"name": "Fen", "description": FOX}],
        "beats": [
            {"text": "Fen dreams of the sky.", "picture_prompt": f"{FOX} watching geese", "characters": ["Fen"]},
            {
                "text": "Fen builds wings.",
                "picture_prompt": f"{FOX} with paper wings",
                "characters": ["Fen"],
                "same_scene": True,
                "edit_instruction": "give the fox paper wings",
            },
            {"text": "Fen flies over the lake.", "picture_prompt": f"{FOX} flying over a lake", "characters": ["Fen"]},
        ],
    }


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_free_form_story_reaches_pictures_manifest_and_lineage(
    engine: RecordingEngine, memory: ImageMemory, tmp_path: Path
) -> None:
    planner = ScriptedPlanner(turns=[AIMessage("Sure:\n```json\n" + json.dumps(fox_chunk()) + "\n```")])
    out = tmp_path / "fox"
    graph = create_story_graph(engine, memory, planner=planner, steps=3, out_dir=out, recall_k=2, **STEPS)
    final = graph.invoke({"premise": "a fox who learns to fly", "base_seed": 7, "story_id": "fox"})

    # the planner's text reaches the model: generations with the picture prompts, the edit with its instruction
    prompts = [prompt for prompt, _ in engine.generations]
    assert prompts[0] == f"{FOX} watching geese" and f"{FOX} flying over a lake" in prompts
    assert engine.edits[0] == "give the fox paper wings"
    # the new scene reads Fen's latest pictures (beat 1, then beat 0) as image context, SEED-X-I style
    assert (f"{FOX} flying over a lake", 2) in engine.generations
    # consistency check by comprehension names the character's look; random weights fail it -> one redraw each
    assert engine.questions[0] == f"Is there {FOX} in the picture? Answer yes or no."

    manifest = json.loads(Path(final["manifest"]).read_text())
    assert manifest["premise"] == "a fox who learns to fly"
    assert manifest["characters"] == [{"name": "Fen", "description": FOX}]
    beats = manifest["beats"]
    assert [b["text"] for b in beats] == ["Fen dreams of the sky.", "Fen builds wings.", "Fen flies over the lake."]
    assert [[a["mode"] for a in b["attempts"]] for b in beats] == [
        ["generate", "generate"],
        ["edit", "generate"],
    ] * 1 + [["generate", "generate"]]
    assert all(b["consistent"] is False for b in beats)  # checked, and drawn anew once: random weights fail again
    assert beats[2]["context_ids"] == [beats[1]["image_id"], beats[0]["image_id"]]
    assert beats[1]["attempts"][1]["context_ids"] == [beats[0]["image_id"]]  # the redraw reads Fen's picture

    # memory: prompts and captions are the planner's, the edit is a child of beat 0's final picture
    records = {r.id: r for r in memory.find(namespace="story/fox")}
    assert records[beats[0]["image_id"]].prompt == f"{FOX} watching geese"
    assert records[beats[0]["image_id"]].caption == "Fen dreams of the sky."
    edit = records[beats[1]["attempts"][0]["image_id"]]
    assert (edit.parent_id, edit.operation) == (beats[0]["image_id"], "story-edit")
    assert len(records) == 6  # 3 beats x (first try + redraw): every version kept

    page = (out / "storyboard.html").read_text()
    assert page.count("<figure>") == 3 and "Fen flies over the lake." in page and "Fen (a small orange fox" in page
    with Image.open(out / "beat_002.png") as saved:
        assert saved.convert("RGB").tobytes() == memory.load(beats[2]["image_id"]).convert("RGB").tobytes()


def test_bad_planner_output_is_repaired_once(engine: RecordingEngine, memory: ImageMemory, tmp_path: Path) -> None:
    seen: list[list[BaseMessage]] = []

    def good(messages: list[BaseMessage]) -> AIMessage:
        seen.append(messages)
        return AIMessage(json.dumps({**fox_chunk(), "beats": fox_chunk()["beats"][:1]}))

    planner = ScriptedPlanner(turns=[AIMessage('{"beats": [{"text": "no picture prompt"}]}'), good])
    graph = create_story_graph(engine, memory, planner=planner, steps=1, out_dir=tmp_path / "s", **STEPS)
    final = graph.invoke({"premise": "a fox who learns to fly"})
    assert final["step"] == 1
    repair = seen[0][-1].content
    assert "not valid" in repair and "picture_prompt" in repair  # the validation error was quoted back


def test_bad_planner_output_twice_is_a_typed_error_with_nothing_left(
    engine: RecordingEngine, memory: ImageMemory, tmp_path: Path
) -> None:
    wrong_count = json.dumps(fox_chunk())  # three beats where two were asked for
    planner = ScriptedPlanner(turns=[AIMessage("I cannot plan that."), AIMessage(wrong_count)])
    out = tmp_path / "never"
    graph = create_story_graph(engine, memory, planner=planner, steps=2, out_dir=out, **STEPS)
    with pytest.raises(PlannerOutputError, match="exactly 2") as caught:
        graph.invoke({"premise": "a fox who learns to fly"})
    assert "story_beats" in str(caught.value)
    assert memory.count() == 0 and not out.exists() and engine.generations == []


def test_25_beats_run_in_bounded_memory(engine: RecordingEngine, memory: ImageMemory, tmp_path: Path) -> None:
    planner = PlainPlanner()
    out = tmp_path / "board"
    graph = create_story_graph(engine, memory, planner=planner, steps=25, out_dir=out, **STEPS)
    rss: dict[int, float] = {}
    sizes: list[int] = []
    final: dict[str, Any] = {}
    for mode, chunk in graph.stream({"premise": "a rainy week", "base_seed": 100}, stream_mode=["custom", "values"]):
        if mode == "custom" and chunk["event"] == "story_step":
            rss[chunk["step"]] = rss_mib()
        elif mode == "values":
            final = chunk
            sizes.append(len(json.dumps(chunk)))  # plain JSON: ids and text, never pixels
    assert sorted(rss) == list(range(25))
    assert rss[24] - rss[4] < 25, f"RSS grew from {rss[4]:.1f} MiB after beat 5 to {rss[24]:.1f} MiB after beat 25"
    assert max(sizes) < 12000 and sizes[-1] < 1.3 * sizes[len(sizes) // 2]
    assert len(final["recent"]) == RECENT_WINDOW and final["step"] == 25
    assert [r["first_beat"] for r in planner.requests] == [0, 8, 16, 24]  # planned in chunks
    assert memory.count(f"story/{final['story_id']}") == 25  # no checks without characters: one picture a beat
    assert len(list(out.glob("beat_*.png"))) == 25
    assert len(json.loads(Path(final["manifest"]).read_text())["beats"]) == 25


def test_resume_after_a_crash_redoes_no_finished_beat(
    engine: RecordingEngine, memory: ImageMemory, tmp_path: Path
) -> None:
    graph = create_story_graph(
        engine, memory, planner=PlainPlanner(), steps=6, out_dir=tmp_path / "b", checkpointer=InMemorySaver(), **STEPS
    )
    config = {"configurable": {"thread_id": "crash"}}
    engine.crash_on = 2  # beats 0 (generate), 1 (edit), 2 (generate) finish; beat 3's edit crashes
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            graph.invoke({"premise": "a rainy week", "story_id": "crash"}, config, durability="sync")
    finally:
        engine.crash_on = None
    assert graph.get_state(config).values["step"] == 3
    generations = len(engine.generations)
    final = graph.invoke(None, config, durability="sync")
    assert final["step"] == 6
    assert len(engine.generations) - generations == 1  # only beat 4 is new; beats 0 and 2 are not redrawn
    assert memory.count("story/crash") == 6
    assert Path(final["storyboard"]).read_text().count("<figure>") == 6


def test_input_image_starts_the_lineage(engine: RecordingEngine, memory: ImageMemory, tmp_path: Path) -> None:
    start = memory.add(Image.new("RGB", (32, 32), "white"), kind="input", namespace="user:t", caption="empty")
    chunk = {
        "beats": [{"text": "Snow falls.", "picture_prompt": "snow", "same_scene": True, "edit_instruction": "add snow"}]
    }
    planner = ScriptedPlanner(turns=[AIMessage(json.dumps(chunk))])
    graph = create_story_graph(engine, memory, planner=planner, steps=1, out_dir=tmp_path / "b", **STEPS)
    final = graph.invoke({"premise": "winter comes", "input_image_ids": [start.id], "story_id": "in"})
    (beat,) = final["recent"]
    assert beat["mode"] == "edit" and engine.edits == ["add snow"]
    chain = memory.lineage(beat["image_id"])
    assert chain[0].id == start.id and chain[1].operation == "story-input" and chain[1].namespace == "story/in"
    assert chain[2].id == beat["image_id"]


def test_world_plugin_plans_checkable_world_beats(engine: RecordingEngine, memory: ImageMemory, tmp_path: Path) -> None:
    graph = create_story_graph(engine, memory, planner=WorldPlanner(), steps=3, out_dir=tmp_path / "w", **STEPS)
    final = graph.invoke({"premise": "a small red circle at the top left", "base_seed": 3})
    beats = json.loads(Path(final["manifest"]).read_text())["beats"]
    assert beats[0]["text"] == "there is a small red circle at the top left"
    assert [b["attempts"][0]["mode"] for b in beats] == ["generate", "edit", "edit"]  # the scene carries over
    for beat in beats:
        assert set(world.text_words(beat["text"])) <= set(world.VOCABULARY)
        queries = [c["query"] for c in beat["attempts"][0]["checks"]]
        assert "what shape is red?" in queries or "what colour is the circle?" in queries
    assert engine.generations[0][0] == "a small red circle at the top left"


def test_bad_inputs_raise_typed_errors(engine: RecordingEngine, memory: ImageMemory, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="steps"):
        create_story_graph(engine, memory, planner=PlainPlanner(), steps=0, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="recall_k"):
        create_story_graph(engine, memory, planner=PlainPlanner(), recall_k=-1, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="planner"):
        create_story_graph(engine, memory, planner="gpt", out_dir=tmp_path)
    graph = create_story_graph(engine, memory, planner=PlainPlanner(), steps=1, out_dir=tmp_path, **STEPS)
    with pytest.raises(InvalidPromptError, match="premise"):
        graph.invoke({"premise": "  "})
