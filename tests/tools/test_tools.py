"""The SEED-X LangChain tools on a real tiny-random engine and a real image memory (no mocks)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from PIL import Image
from seedx_agent.memory import ImageMemory
from seedx_agent.tools import SeedXToolbox, annotate_boxes, make_seedx_tools, memory_image_embedder

from seedx_agent.engine import SeedXEngine
from seedx_agent.errors import ConfigError
from seedx_agent.model import SeedX
from seedx_agent.pipeline.tokens import Box

NAMESPACE = "user:test/thread:1"


@pytest.fixture(scope="module")
def engine() -> SeedXEngine:
    return SeedXEngine(SeedX.from_pretrained("tiny-random", variants=("seed-x-i", "seed-x-edit")))


@pytest.fixture(scope="module")
def tools(engine: SeedXEngine, memory: ImageMemory) -> dict[str, BaseTool]:
    return {tool.name: tool for tool in make_seedx_tools(engine, memory, namespace=NAMESPACE, default_steps=2)}


@pytest.fixture(scope="module")
def input_id(memory: ImageMemory) -> str:
    pixels = np.zeros((40, 48, 3), dtype=np.uint8)  # (height, width, rgb)
    pixels[8:30, 10:36] = (200, 30, 30)
    return memory.add(Image.fromarray(pixels), kind="input", namespace=NAMESPACE, caption="a red square").id


@pytest.fixture(scope="module")
def generated_id(tools: dict[str, BaseTool]) -> str:
    message = call(tools["generate_image"], {"prompt": "a striped zebra on green grass", "seed": 7})
    return message.artifact["image_id"]


def call(tool: BaseTool, args: dict, call_id: str = "1") -> ToolMessage:
    message = tool.invoke({"type": "tool_call", "id": call_id, "name": tool.name, "args": args})
    assert isinstance(message, ToolMessage)
    assert message.tool_call_id == call_id
    return message


def test_factory_builds_five_described_tools(tools: dict[str, BaseTool]) -> None:
    assert sorted(tools) == ["comprehend", "edit_image", "generate_image", "ground", "recall_images"]
    for tool in tools.values():
        assert tool.response_format == "content_and_artifact"
        assert "memory id" in tool.description
        schema = tool.get_input_schema().model_json_schema()
        assert all(field.get("description") for field in schema["properties"].values()), tool.name


def test_factory_rejects_bad_default_steps(engine: SeedXEngine, memory: ImageMemory) -> None:
    with pytest.raises(ConfigError, match="default_steps"):
        make_seedx_tools(engine, memory, namespace=NAMESPACE, default_steps=0)
    for bad in (0, True, 2.5):  # the toolbox the graphs build directly checks the same
        with pytest.raises(ConfigError, match="default_steps"):
            SeedXToolbox(engine, memory, NAMESPACE, bad)  # type: ignore[arg-type]


def test_memory_image_embedder_gives_unit_vit_vectors(engine: SeedXEngine) -> None:
    embed = memory_image_embedder(engine)
    vectors = embed([Image.new("RGB", (20, 20), (0, 0, 255)), Image.new("RGB", (30, 10), (0, 255, 0))])
    assert vectors.shape[0] == 2 and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_generate_image_stores_record_with_seed(
    tools: dict[str, BaseTool], memory: ImageMemory, generated_id: str
) -> None:
    record = memory.get(generated_id)
    assert record.kind == "generated"
    assert record.namespace == NAMESPACE
    assert record.prompt == "a striped zebra on green grass"
    assert record.seed == 7
    assert memory.load(generated_id).size == (record.width, record.height)


def test_generate_image_message_and_unseeded_call(tools: dict[str, BaseTool], memory: ImageMemory) -> None:
    message = call(tools["generate_image"], {"prompt": "a blue kite"})
    assert message.status == "success"
    image_id, seed = message.artifact["image_id"], message.artifact["seed"]
    assert image_id in message.content and f"seed {seed}" in message.content
    assert memory.get(image_id).seed == seed  # a fresh seed is drawn, recorded and reported
    json.dumps(message.artifact)


def test_comprehend_answers_about_several_images(tools: dict[str, BaseTool], input_id: str, generated_id: str) -> None:
    message = call(tools["comprehend"], {"image_ids": [input_id, generated_id], "question": "What differs?"})
    assert message.status == "success"
    assert isinstance(message.content, str)
    assert message.artifact["image_ids"] == [input_id, generated_id]
    assert message.artifact["answer"] == message.content
    json.dumps(message.artifact)


def test_ground_returns_box_lists_and_artifact(tools: dict[str, BaseTool], memory: ImageMemory, input_id: str) -> None:
    message = call(tools["ground"], {"image_id": input_id, "phrase": "the red square"})
    assert message.status == "success"
    artifact = message.artifact
    assert artifact["image_id"] == input_id and artifact["phrase"] == "the red square"
    json.dumps(artifact)
    # Random weights rarely emit boxes; whichever happened, artifact and memory must agree.
    for box in artifact["boxes"]:
        assert len(box) == 4 and all(isinstance(value, float) for value in box)
    if artifact["boxes"]:
        annotated = memory.get(artifact["annotated_image_id"])
        assert (annotated.parent_id, annotated.operation, annotated.kind) == (input_id, "annotate", "generated")
    else:
        assert artifact["annotated_image_id"] is None
        assert "No box found" in message.content


def test_annotate_boxes_draws_rectangle_outline() -> None:
    image = Image.new("RGB", (50, 40), (0, 0, 0))
    annotated = annotate_boxes(image, [Box(10, 5, 30, 25, label="thing")])
    pixels = np.asarray(annotated)  # (40, 50, 3)
    assert tuple(pixels[5, 20]) == (255, 0, 0)  # top edge
    assert tuple(pixels[15, 10]) == (255, 0, 0)  # left edge
    assert tuple(pixels[15, 20]) == (0, 0, 0)  # inside stays untouched
    assert tuple(np.asarray(image)[5, 20]) == (0, 0, 0)  # the input is not modified


def test_edit_image_records_lineage(tools: dict[str, BaseTool], memory: ImageMemory, generated_id: str) -> None:
    message = call(tools["edit_image"], {"image_id": generated_id, "instruction": "make the grass blue", "seed": 3})
    assert message.status == "success"
    edited_id = message.artifact["image_id"]
    assert message.artifact["parent_id"] == generated_id
    record = memory.get(edited_id)
    assert (record.kind, record.operation, record.parent_id, record.seed) == ("edited", "edit", generated_id, 3)
    assert record.prompt == "make the grass blue"
    assert [r.id for r in memory.lineage(edited_id)] == [generated_id, edited_id]
    json.dumps(message.artifact)


def test_recall_finds_generated_image_by_text_and_by_image(tools: dict[str, BaseTool], generated_id: str) -> None:
    message = call(tools["recall_images"], {"query": "zebra on grass", "k": 3})
    assert message.status == "success"
    found = [item["image_id"] for item in message.artifact["images"]]
    assert found[0] == generated_id
    assert generated_id in message.content
    json.dumps(message.artifact)

    similar = call(tools["recall_images"], {"image_id": generated_id, "k": 2})
    assert similar.status == "success"
    similar_ids = [item["image_id"] for item in similar.artifact["images"]]
    assert generated_id not in similar_ids and 1 <= len(similar_ids) <= 2


@pytest.mark.parametrize(
    ("tool_name", "args", "expected"),
    [
        ("comprehend", {"image_ids": ["img_0123456789abcdef"], "question": "what?"}, ["no image with id", "recall"]),
        ("edit_image", {"image_id": "../../etc/passwd", "instruction": "x"}, ["not an image id", "file paths"]),
        ("ground", {"image_id": "/tmp/cat.png", "phrase": "cat"}, ["not an image id", "img_"]),
        ("generate_image", {"prompt": "   "}, ["prompt is empty", "non-empty"]),
        ("ground", {"image_id": "img_0123456789abcdef", "phrase": ""}, ["phrase is empty"]),
        ("recall_images", {"k": 2}, ["exactly one of query", "image_id"]),
        ("recall_images", {"query": "x", "image_id": "img_0123456789abcdef"}, ["exactly one of query"]),
    ],
)
def test_fixable_mistakes_become_tool_errors(
    tools: dict[str, BaseTool], tool_name: str, args: dict, expected: list[str]
) -> None:
    message = call(tools[tool_name], args)
    assert message.status == "error"
    assert message.artifact is None
    for words in expected:
        assert words in message.content, message.content


@pytest.mark.parametrize(
    ("tool_name", "args", "field"),
    [
        ("comprehend", {"image_ids": "img_0123456789abcdef", "question": "what?"}, "image_ids"),
        ("comprehend", {"image_ids": [], "question": "what?"}, "image_ids"),
        ("generate_image", {"prompt": "a cat", "seed": "lucky"}, "seed"),
        ("recall_images", {"query": "cat", "k": 0}, "k"),
        ("edit_image", {"image_id": "img_0123456789abcdef"}, "instruction"),
        ("ground", {"image_id": "img_0123456789abcdef", "phrase": "x", "colour": "red"}, "colour"),
    ],
)
def test_wrong_argument_types_become_tool_errors(
    tools: dict[str, BaseTool], tool_name: str, args: dict, field: str
) -> None:
    message = call(tools[tool_name], args)
    assert message.status == "error"
    assert "invalid tool arguments" in message.content
    assert field in message.content


def test_ids_from_another_namespace_are_unknown(tools: dict[str, BaseTool], memory: ImageMemory) -> None:
    foreign = memory.add(Image.new("RGB", (16, 16), (9, 9, 9)), kind="input", namespace="user:someone-else")
    message = call(tools["comprehend"], {"image_ids": [foreign.id], "question": "what?"})
    assert message.status == "error"
    assert foreign.id in message.content and NAMESPACE in message.content


def test_tool_node_runs_parallel_calls_on_one_engine(
    engine: SeedXEngine, tools: dict[str, BaseTool], input_id: str, generated_id: str
) -> None:
    calls_before = engine.calls
    request = AIMessage(
        content="",
        tool_calls=[
            {"name": "comprehend", "args": {"image_ids": [input_id], "question": "Describe it."}, "id": "a"},
            {"name": "ground", "args": {"image_id": generated_id, "phrase": "the zebra"}, "id": "b"},
        ],
    )
    graph = StateGraph(MessagesState)
    graph.add_node("tools", ToolNode(list(tools.values())))
    graph.add_edge(START, "tools")
    graph.add_edge("tools", END)
    result = graph.compile().invoke({"messages": [request]})
    messages = result["messages"][1:]
    assert [m.tool_call_id for m in messages] == ["a", "b"]
    assert all(m.status == "success" for m in messages)
    assert messages[0].artifact["image_ids"] == [input_id]
    assert messages[1].artifact["image_id"] == generated_id
    assert engine.calls - calls_before == 2
