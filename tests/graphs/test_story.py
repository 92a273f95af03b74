"""The story graph on a real tiny-random engine and a real image memory: 25 steps in bounded memory,
lineage, seeds, the storyboard, and resuming a crashed or interrupted run without redoing steps."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from PIL import Image
from seedx_agent.graphs.story import RECENT_WINDOW, create_story_graph, initial_scene, plan_beat
from seedx_agent.memory import ImageMemory
from seedx_agent.tools import memory_image_embedder

from seedx_agent.engine import SeedXEngine
from seedx_agent.errors import ConfigError, InvalidPromptError
from seedx_agent.miniature import world
from seedx_agent.model import SeedX

STEPS = dict(num_inference_steps=2)


class CrashingEngine(SeedXEngine):
    """A real engine that raises on its ``crash_on``-th edit (a crash in the middle of a run)."""

    crash_on: int | None = None
    edits = 0
    generations = 0

    def edit_image(self, *args: Any, **kwargs: Any) -> Any:
        self.edits += 1
        if self.crash_on is not None and self.edits == self.crash_on:
            raise RuntimeError("simulated crash")
        return super().edit_image(*args, **kwargs)

    def generate_image(self, *args: Any, **kwargs: Any) -> Any:
        self.generations += 1
        return super().generate_image(*args, **kwargs)


@pytest.fixture(scope="module")
def engine() -> CrashingEngine:
    return CrashingEngine(SeedX.from_preset("tiny-random", variants=("seed-x-i", "seed-x-edit")))


@pytest.fixture
def memory(engine: SeedXEngine, tmp_path: Path) -> Iterator[ImageMemory]:
    with ImageMemory.open(tmp_path / "memory", image_embedder=memory_image_embedder(engine)) as opened:
        yield opened


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_25_steps_run_in_bounded_memory_with_lineage_and_storyboard(
    engine: CrashingEngine, memory: ImageMemory, tmp_path: Path
) -> None:
    out = tmp_path / "board"
    graph = create_story_graph(engine, memory, steps=25, out_dir=out, **STEPS)
    rss: dict[int, float] = {}
    state_sizes: list[int] = []
    events: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    premise = "a small red circle at the top left"
    for mode, chunk in graph.stream({"premise": premise, "base_seed": 100}, stream_mode=["custom", "values"]):
        if mode == "custom" and chunk["event"] == "story_step":
            events.append(chunk)
            rss[chunk["step"]] = rss_mib()
        elif mode == "values":
            final = chunk
            serialized = json.dumps(chunk)  # the state is plain JSON: ids and text, never pixels
            state_sizes.append(len(serialized))
    assert [event["step"] for event in events] == list(range(25))
    assert rss[24] - rss[4] < 25, f"RSS grew from {rss[4]:.1f} MiB after step 5 to {rss[24]:.1f} MiB after step 25"
    assert len(final["recent"]) == RECENT_WINDOW and final["step"] == 25
    assert max(state_sizes) < 8000 and state_sizes[-1] < 1.3 * state_sizes[len(state_sizes) // 2]

    # seeds, lineage and namespace: one picture per step, each the edit of the previous one
    assert [event["seed"] for event in events] == [100 + step for step in range(25)]
    namespace = f"story/{final['story_id']}"
    assert memory.count(namespace) == 25
    chain = memory.lineage(events[-1]["image_id"])
    assert [record.id for record in chain] == [event["image_id"] for event in events]
    assert chain[0].operation == "story-generate" and chain[0].parent_id is None
    assert all(record.operation == "story-edit" and record.namespace == namespace for record in chain[1:])
    assert [record.seed for record in chain] == [100 + step for step in range(25)]

    # the plan speaks the world's story language about one hero read from the premise
    assert events[0]["sentence"] == "there is a small red circle at the top left"
    assert events[0]["instruction"] == "a small red circle at the top left"
    verbs = {"moves", "meets", "leaves", "grows", "shrinks"}
    for event in events[1:]:
        assert set(world.text_words(event["sentence"])) <= set(world.VOCABULARY)
        assert verbs & set(event["sentence"].split()), event["sentence"]
        assert event["sentence"].startswith("the red circle") or event["sentence"].endswith("leaves")

    # storyboard: html + one png per step, the png equal to the stored picture
    page = (out / "storyboard.html").read_text()
    assert page.count("<figure>") == 25 and "step_024.png" in page
    with Image.open(out / "step_007.png") as saved:
        assert saved.convert("RGB").tobytes() == memory.load(events[7]["image_id"]).tobytes()
    assert final["storyboard"] == str(out / "storyboard.html")


def test_resume_after_a_crash_redoes_no_finished_step(
    engine: CrashingEngine, memory: ImageMemory, tmp_path: Path
) -> None:
    graph = create_story_graph(
        engine, memory, steps=6, out_dir=tmp_path / "board", checkpointer=InMemorySaver(), **STEPS
    )
    config = {"configurable": {"thread_id": "crash"}}
    engine.edits, engine.generations, engine.crash_on = 0, 0, 3  # steps 0 (generate), 1, 2 succeed; 3 crashes
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            graph.invoke({"premise": "a blue square", "story_id": "crash"}, config, durability="sync")
    finally:
        engine.crash_on = None
    assert graph.get_state(config).values["step"] == 3
    assert memory.count("story/crash") == 3
    edits_before, generations_before = engine.edits, engine.generations

    final = graph.invoke(None, config, durability="sync")
    assert final["step"] == 6 and final["storyboard"]
    assert engine.generations == generations_before  # step 0 was not generated again
    assert engine.edits - edits_before == 3  # only steps 3, 4, 5 (the crashed step is retried once)
    assert memory.count("story/crash") == 6
    page = Path(final["storyboard"]).read_text()
    assert page.count("<figure>") == 6


def test_interrupt_before_illustrate_then_resume(engine: CrashingEngine, memory: ImageMemory, tmp_path: Path) -> None:
    graph = create_story_graph(
        engine, memory, steps=2, out_dir=tmp_path / "board", checkpointer=InMemorySaver(), **STEPS
    )
    config = {"configurable": {"thread_id": "pause"}}
    graph.invoke({"premise": "a green triangle"}, config, interrupt_before=["illustrate"])
    paused = graph.get_state(config)
    assert paused.next == ("illustrate",) and paused.values["step"] == 0
    assert paused.values["beat"]["operation"] == "generate"
    final = graph.invoke(None, config)
    assert final["step"] == 2 and [item["step"] for item in final["recent"]] == [0, 1]


def test_input_image_starts_the_lineage(engine: CrashingEngine, memory: ImageMemory, tmp_path: Path) -> None:
    start = memory.add(
        Image.new("RGB", (32, 32), "white"), kind="input", namespace="user:t", caption="an empty picture"
    )
    graph = create_story_graph(engine, memory, steps=2, out_dir=tmp_path / "board", recall_k=3, **STEPS)
    final = graph.invoke({"premise": "a large orange square in the center", "input_image_ids": [start.id]})
    first, second = final["recent"]
    assert first["operation"] == "edit" and first["parent_id"] == start.id
    assert first["instruction"] == "add a large orange square in the center"
    assert [record.id for record in memory.lineage(second["image_id"])] == [
        start.id,
        first["image_id"],
        second["image_id"],
    ]


def test_planner_is_deterministic_and_reads_the_premise() -> None:
    scene = initial_scene("two large purple triangles at the bottom right", seed=5)
    assert scene.shapes[0] == world.Shape("triangle", "purple", "large", (2, 2))
    beats = []
    for step in range(8):
        beat = plan_beat(scene, step, 40 + step, has_source_image=step > 0)
        beats.append(beat["sentence"])
        scene_next = beat["scene"]
        assert beat == plan_beat(scene, step, 40 + step, has_source_image=step > 0)
        scene = world.Scene(
            shapes=tuple(world.Shape(k, c, s, (r, q)) for k, c, s, r, q in scene_next["shapes"]), character=0
        )
        assert scene.shapes[0].kind == "triangle" and scene.shapes[0].colour == "purple"  # the hero stays itself
    assert beats[0] == "there is a large purple triangle at the bottom right"
    assert all(re.fullmatch(r"[a-z ]+", sentence) for sentence in beats)


def test_bad_inputs_raise_typed_errors(engine: CrashingEngine, memory: ImageMemory, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="steps"):
        create_story_graph(engine, memory, steps=0, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="recall_k"):
        create_story_graph(engine, memory, recall_k=0, out_dir=tmp_path)
    graph = create_story_graph(engine, memory, steps=1, out_dir=tmp_path, **STEPS)
    with pytest.raises(InvalidPromptError, match="premise"):
        graph.invoke({"premise": "  "})
