"""The refine graph: any request is planned into checks, verified by SEED-X, corrected by the planner's edit,
stored with lineage; human approval by interrupt; the world plug-in's checks; region geometry of checks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from seedx_agent.graphs.checks import box_region, in_region, run_checks
from seedx_agent.graphs.planning import Check, PlannerOutputError
from seedx_agent.graphs.refine import create_refine_graph
from seedx_agent.graphs.scripted import ScriptedPlanner
from seedx_agent.memory import ImageMemory
from seedx_agent.tools import memory_image_embedder

from seedx_agent.engine import SeedXEngine
from seedx_agent.errors import ConfigError, InvalidPromptError
from seedx_agent.miniature.planners import WorldPlanner
from seedx_agent.model import GroundingResult, SeedX
from seedx_agent.pipeline.tokens import Box

REQUEST = "a lighthouse at dusk, warm light, two boats on the left"
PLAN = {
    "prompt": "a lighthouse at dusk in warm light, two small boats on the left",
    "checks": [
        {"kind": "ask", "query": "Is there a lighthouse?", "expect": "yes"},
        {"kind": "ask", "query": "How many boats are there?", "expect": "two"},
        {"kind": "ground", "query": "the boats", "expect": "left"},
    ],
}


@pytest.fixture(scope="module")
def engine() -> SeedXEngine:
    return SeedXEngine(SeedX.from_pretrained("tiny-random", variants=("seed-x-i", "seed-x-edit")))


@pytest.fixture
def memory(engine: SeedXEngine, tmp_path: Path) -> Iterator[ImageMemory]:
    with ImageMemory.open(tmp_path / "memory", image_embedder=memory_image_embedder(engine)) as opened:
        yield opened


class SeeingEngine:
    """Real generation and editing from tiny-random; comprehension and grounding answer from a script of what
    each version shows (random weights never draw a lighthouse, so this is how the verified branch is reached)."""

    def __init__(self, engine: SeedXEngine, answers: list[dict[str, Any]]) -> None:
        self.model = engine.model
        self._engine = engine
        self.answers = answers  # per version: {"Is there a lighthouse?": "Yes.", ..., "the boats": "left"|None}
        self.version = -1
        self.asked: list[str] = []
        self.prompts: list[str] = []
        self.edits: list[str] = []

    def generate_image(self, prompt: str, **kwargs: Any) -> Any:
        self.version += 1
        self.prompts.append(prompt)
        return self._engine.generate_image(prompt, **kwargs)

    def edit_image(self, image: Any, instruction: str, **kwargs: Any) -> Any:
        self.version += 1
        self.edits.append(instruction)
        return self._engine.edit_image(image, instruction, **kwargs)

    def comprehend(self, image: Any, question: str) -> Any:
        self.asked.append(question)
        return type("Answer", (), {"text": self.answers[self.version][question]})()

    def ground(self, image: Any, phrase: str) -> GroundingResult:
        self.asked.append(phrase)
        where = self.answers[self.version][phrase]
        width, height = image.size
        if where is None:
            return GroundingResult([], "", "")
        x = 0 if where == "left" else width * 2 / 3
        return GroundingResult([Box(x, height / 3, x + width / 4, height / 2, label=phrase)], "", "")


WRONG = {"Is there a lighthouse?": "Yes, there is.", "How many boats are there?": "one boat", "the boats": "right"}
RIGHT = {"Is there a lighthouse?": "yes", "How many boats are there?": "There are two boats.", "the boats": "left"}


def fix_turn(instruction: str, seen: list[list[BaseMessage]]) -> Any:
    def turn(messages: list[BaseMessage]) -> AIMessage:
        seen.append(messages)
        return AIMessage(json.dumps({"action": "edit", "instruction": instruction}))

    return turn


def test_free_form_request_is_planned_verified_corrected_and_stored(engine: SeedXEngine, memory: ImageMemory) -> None:
    seen: list[list[BaseMessage]] = []
    planner = ScriptedPlanner(turns=[AIMessage(json.dumps(PLAN)), fix_turn("add a second boat on the left", seen)])
    seeing = SeeingEngine(engine, [WRONG, RIGHT])
    graph = create_refine_graph(
        seeing, memory, planner=planner, max_rounds=3, namespace="refine/t", num_inference_steps=1
    )
    events, final = [], {}
    for mode, chunk in graph.stream({"request": REQUEST, "seed": 5}, stream_mode=["custom", "values"]):
        if mode == "custom":
            events.append(chunk["event"])
        else:
            final = chunk
    assert events == [
        "plan", "generate_start", "generate_end", "verify_start", "verify_end", "fix",
        "edit_start", "edit_end", "verify_start", "verify_end",
    ]  # fmt: skip
    assert seeing.prompts == [PLAN["prompt"]]  # the planner's prompt reached the model
    assert seeing.edits == ["add a second boat on the left"]  # and its correction
    assert final["verified"] is True and final["round"] == 1
    assert final["best_image_id"] == final["image_id"] == final["versions"][1]["image_id"]
    first, second = final["verdicts"]
    assert [c["passed"] for c in first["checks"]] == [True, False, False]
    assert [c["observed"] for c in first["checks"]] == ["Yes, there is.", "one boat", "right"]
    assert all(c["passed"] for c in second["checks"])
    # the fix request showed the planner what failed and what SEED-X saw
    fix_request = json.loads(seen[0][-1].content)
    assert [c["query"] for c in fix_request["failed"]] == ["How many boats are there?", "the boats"]
    assert fix_request["failed"][0]["observed"] == "one boat"
    # memory: both versions with lineage, the request as caption, the instruction as prompt
    generated, edited = (memory.get(v["image_id"], namespace="refine/t") for v in final["versions"])
    assert (generated.prompt, generated.seed, generated.parent_id) == (PLAN["prompt"], 5, None)
    assert (edited.prompt, edited.parent_id, edited.operation, edited.seed) == (
        "add a second boat on the left",
        generated.id,
        "edit",
        6,
    )
    assert generated.caption == REQUEST
    json.dumps(final)  # ids, checks and verdicts only


def test_round_limit_ends_unverified_and_says_so(engine: SeedXEngine, memory: ImageMemory) -> None:
    planner = ScriptedPlanner(
        turns=[AIMessage(json.dumps(PLAN)), AIMessage('{"action": "regenerate", "instruction": "two boats"}')]
    )
    seeing = SeeingEngine(engine, [WRONG, WRONG])
    graph = create_refine_graph(seeing, memory, planner=planner, max_rounds=1, num_inference_steps=1)
    final = graph.invoke({"request": REQUEST})
    assert final["verified"] is False and final["round"] == 1
    assert [v["operation"] for v in final["versions"]] == ["generate", "regenerate"]
    assert seeing.prompts == [PLAN["prompt"], "two boats"] and final["versions"][1]["parent_id"] is None
    assert final["best_image_id"] == final["versions"][0]["image_id"]  # no better than the first: keep the first


def test_human_approval_interrupts_before_each_correction(engine: SeedXEngine, memory: ImageMemory) -> None:
    seen: list[list[BaseMessage]] = []
    planner = ScriptedPlanner(
        turns=[AIMessage(json.dumps(PLAN)), fix_turn("add a boat", seen), fix_turn("move the boats left", seen)]
    )
    seeing = SeeingEngine(engine, [WRONG, WRONG, RIGHT])
    graph = create_refine_graph(
        seeing, memory, planner=planner, approve=True, checkpointer=InMemorySaver(), num_inference_steps=1
    )
    config = {"configurable": {"thread_id": "ok"}}
    paused = graph.invoke({"request": REQUEST}, config)
    (pending,) = paused["__interrupt__"]
    assert pending.value["instruction"] == "add a boat" and seeing.edits == []  # nothing applied yet
    paused = graph.invoke(Command(resume="add two boats on the left"), config)  # the human rewrites it
    assert seeing.edits == ["add two boats on the left"]
    final = graph.invoke(Command(resume=True), config)
    assert seeing.edits == ["add two boats on the left", "move the boats left"] and final["verified"] is True

    declined = create_refine_graph(
        SeeingEngine(engine, [WRONG]),
        memory,
        planner=ScriptedPlanner(turns=[AIMessage(json.dumps(PLAN)), fix_turn("add a boat", seen)]),
        approve=True,
        checkpointer=InMemorySaver(),
        num_inference_steps=1,
    )
    config = {"configurable": {"thread_id": "no"}}
    declined.invoke({"request": REQUEST}, config)
    final = declined.invoke(Command(resume=False), config)
    assert final["stopped"] == "declined" and final["verified"] is False and len(final["versions"]) == 1


def test_bad_planner_output_twice_stores_nothing(engine: SeedXEngine, memory: ImageMemory) -> None:
    planner = ScriptedPlanner(turns=[AIMessage('{"prompt": "x", "checks": []}'), AIMessage("no idea")])
    graph = create_refine_graph(engine, memory, planner=planner, num_inference_steps=1)
    with pytest.raises(PlannerOutputError, match="RefinePlan"):
        graph.invoke({"request": REQUEST})
    assert memory.count() == 0


def test_world_plugin_checks_and_fixes_in_world_terms(engine: SeedXEngine, memory: ImageMemory) -> None:
    graph = create_refine_graph(engine, memory, planner=WorldPlanner(), max_rounds=1, num_inference_steps=1)
    final = graph.invoke({"request": "a red circle at the top left", "seed": 3})
    assert final["prompt"] == "a red circle at the top left"
    assert [(c["kind"], c["query"], c["expect"]) for c in final["checks"]] == [
        ("ask", "what shape is red?", "circle"),
        ("ask", "what colour is the circle?", "red"),
        ("ground", "the red circle", "top left"),
    ]
    assert final["verified"] is False and final["round"] == 1  # random weights: a world fix was tried
    assert final["versions"][1]["instruction"].startswith(("add a red circle", "make the", "move the red circle"))
    with pytest.raises(InvalidPromptError, match="world planner"):
        create_refine_graph(engine, memory, planner=WorldPlanner()).invoke({"request": "a lighthouse at dusk"})


def test_factory_and_input_errors(engine: SeedXEngine, memory: ImageMemory) -> None:
    with pytest.raises(ConfigError, match="max_rounds"):
        create_refine_graph(engine, memory, planner=WorldPlanner(), max_rounds=-1)
    with pytest.raises(ConfigError, match="checkpointer"):
        create_refine_graph(engine, memory, planner=WorldPlanner(), approve=True)
    graph = create_refine_graph(engine, memory, planner=WorldPlanner())
    with pytest.raises(InvalidPromptError, match="empty"):
        graph.invoke({"request": " "})
    with pytest.raises(ConfigError, match="seed"):
        graph.invoke({"request": "a red circle", "seed": -1})


def test_regions_of_boxes() -> None:
    assert box_region(Box(0, 0, 10, 10), 90, 90) == "top left"
    assert box_region(Box(40, 40, 50, 50), 90, 90) == "center"
    assert box_region(Box(40, 0, 50, 10), 90, 90) == "top"
    box = Box(0, 40, 10, 50)  # centre at the middle of the left edge
    assert in_region(box, 90, 90, "left") and in_region(box, 90, 90, "center left")
    assert not in_region(box, 90, 90, "top left") and not in_region(box, 90, 90, "right")
    with pytest.raises(ConfigError, match="region"):
        run_checks(None, None, [Check(kind="ground", query="x", expect="behind the tree")])  # type: ignore[arg-type]


def test_answers_match_whole_words_with_plurals() -> None:
    from seedx_agent.graphs.checks import _answer_matches

    assert _answer_matches("Yes, there is.", "yes") and _answer_matches("There are two boats.", "two boat")
    assert not _answer_matches("e ye h", "yes")  # a fragment is not the word
    assert not _answer_matches("no", "yes") and not _answer_matches("one boat", "two")
