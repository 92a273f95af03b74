"""The refine graph: request parsing, the verifier's geometry and edit phrasing, and real loops on tiny-random."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from seedx_agent.graphs.refine import create_refine_graph, edit_instruction, parse_request, position_of_box
from seedx_agent.memory import ImageMemory

from seedx_agent.engine import SeedXEngine
from seedx_agent.errors import ConfigError, InvalidPromptError
from seedx_agent.miniature.world import POSITIONS
from seedx_agent.model import GroundingResult, SeedX
from seedx_agent.tokens import Box

REQUEST = "a red circle at the top left"


@pytest.fixture(scope="module")
def engine() -> SeedXEngine:
    return SeedXEngine(SeedX.from_preset("tiny-random", variants=("seed-x-i", "seed-x-edit")))


# ---------------------------------------------------------------------------------------------- parsing and geometry


def test_parse_request_reads_world_facts() -> None:
    assert parse_request(REQUEST) == [{"colour": "red", "kind": "circle", "position": "top left"}]
    assert parse_request("A small blue square in the centre and a green triangle on the right") == [
        {"size": "small", "colour": "blue", "kind": "square", "position": "center"},
        {"colour": "green", "kind": "triangle", "position": "right"},
    ]
    assert parse_request("two circles at the top") == [{"kind": "circle", "position": "top"}]


@pytest.mark.parametrize("request_text", ["", "   ", "a lighthouse at dusk", "something at the top left"])
def test_parse_request_refuses_uncheckable_requests(request_text: str) -> None:
    with pytest.raises(InvalidPromptError):
        parse_request(request_text)


def test_position_of_box_names_the_cell_of_the_centre() -> None:
    for index, name in enumerate(POSITIONS):
        row, col = divmod(index, 3)
        box = Box(col * 30 + 5, row * 20 + 2, col * 30 + 25, row * 20 + 18)  # inside cell (row, col) of 90x60
        assert position_of_box(box, 90, 60) == name
    assert position_of_box(Box(0, 0, 90, 60), 90, 60) == "center"


def _check(name: str, expected: str, observed: str | None) -> dict[str, Any]:
    return {"object": 0, "check": name, "query": "q", "expected": expected, "observed": observed,
            "passed": expected == observed}


def test_edit_instruction_fixes_the_first_failure_in_world_phrasing() -> None:
    facts = parse_request(REQUEST)
    ok = [_check("shape", "circle", "circle"), _check("colour", "red", "red")]
    ok.append(_check("position", "top left", "top left"))
    assert edit_instruction(facts, ok) is None
    wrong_colour = [ok[0], _check("colour", "red", "blue"), ok[2]]
    assert edit_instruction(facts, wrong_colour) == "make the blue circle red"
    wrong_place = [ok[0], ok[1], _check("position", "top left", "bottom right")]
    assert edit_instruction(facts, wrong_place) == "move the red circle to the top left"
    not_found = [ok[0], ok[1], _check("position", "top left", None)]
    assert edit_instruction(facts, not_found) == "add a red circle at the top left"
    wrong_shape = [_check("shape", "circle", "square"), ok[1], ok[2]]
    assert edit_instruction(facts, wrong_shape) == "add a red circle at the top left"
    sized = parse_request("a large orange square")
    assert edit_instruction(sized, [_check("size", "large", "small")]) == "make the orange square large"


def test_factory_validates_arguments(engine: SeedXEngine, memory: ImageMemory) -> None:
    with pytest.raises(ConfigError, match="max_rounds"):
        create_refine_graph(engine, memory, max_rounds=-1)
    with pytest.raises(ConfigError, match="max_rounds"):
        create_refine_graph(engine, memory, max_rounds=True)


# ---------------------------------------------------------------------------------------------- loops


def test_refine_runs_verify_edit_cycle_until_the_limit(engine: SeedXEngine, memory: ImageMemory) -> None:
    graph = create_refine_graph(
        engine, memory, max_rounds=1, namespace="refine/test", num_inference_steps=1, checkpointer=InMemorySaver()
    )
    config = {"configurable": {"thread_id": "cycle"}}
    events, final = [], {}
    for mode, chunk in graph.stream(
        {"request": REQUEST, "seed": 3}, config, stream_mode=["custom", "values"], durability="sync"
    ):
        if mode == "custom":
            events.append(chunk["event"])
        else:
            final = chunk

    assert events == [
        "generate_start", "generate_end", "verify_start", "verify_end",
        "edit_start", "edit_end", "verify_start", "verify_end",
    ]  # fmt: skip
    # Random weights do not draw the requested picture: not verified, stopped at the limit of one edit.
    assert final["verified"] is False and final["round"] == 1
    first, second = final["versions"]
    assert len(final["verdicts"]) == 2
    assert [verdict["image_id"] for verdict in final["verdicts"]] == [first["image_id"], second["image_id"]]
    first_verdict = final["verdicts"][0]
    assert {check["check"] for check in first_verdict["checks"]} == {"shape", "colour", "position"}
    assert first_verdict["instruction"] is not None
    assert first_verdict["instruction"] == edit_instruction(final["objects"], first_verdict["checks"])

    generated = memory.get(first["image_id"], namespace="refine/test")
    assert (generated.kind, generated.operation, generated.parent_id) == ("generated", "generate", None)
    assert (generated.prompt, generated.seed) == (REQUEST, 3)
    edited = memory.get(second["image_id"], namespace="refine/test")
    assert (edited.kind, edited.operation, edited.parent_id) == ("edited", "edit", first["image_id"])
    assert edited.prompt == first_verdict["instruction"] and edited.seed == 4
    assert [r.id for r in memory.lineage(final["image_id"])] == [first["image_id"], second["image_id"]]
    json.dumps(graph.get_state(config).values)  # ids, facts and verdicts only: no pixels in the state


class AnsweringEngine:
    """Real generation from tiny-random, but comprehension and grounding answer as a perfect model would.

    Random weights never draw a red circle, so this is how the "verified -> stop" branch is reached; the
    answers come from the request itself (the picture is not looked at).
    """

    def __init__(self, engine: SeedXEngine) -> None:
        self.model = engine.model
        self.generate_image = engine.generate_image
        self.edit_image = engine.edit_image
        self.questions: list[str] = []

    def comprehend(self, image: Any, question: str) -> Any:
        self.questions.append(question)
        answer = "circle" if question.startswith("what shape") else "red"
        return type("Answer", (), {"text": answer})()

    def ground(self, image: Any, phrase: str) -> GroundingResult:
        self.questions.append(phrase)
        width, height = image.size
        return GroundingResult([Box(0, 0, width / 4, height / 4, label=phrase)], "", "")


def test_refine_stops_as_soon_as_verified(engine: SeedXEngine, memory: ImageMemory) -> None:
    answering = AnsweringEngine(engine)
    graph = create_refine_graph(answering, memory, max_rounds=3, namespace="refine/ok", num_inference_steps=1)
    final = graph.invoke({"request": REQUEST})
    assert final["verified"] is True and final["round"] == 0
    assert [v["operation"] for v in final["versions"]] == ["generate"]
    assert answering.questions == ["what shape is red?", "what colour is the circle?", "the red circle"]
    assert all(check["passed"] for check in final["verdicts"][0]["checks"])
    assert memory.count("refine/ok") == 1
