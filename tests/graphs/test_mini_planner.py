"""The chat agent planned by the bundled miniature itself (``ChatSeedX``, compact tool protocol).

One conversation on a world scene: describe -> ground -> edit -> recall, one request per user turn. Each turn
must call the right tool on the right image (the ``#1`` handle the model writes maps back to the real id), the
tool must succeed, and the turn must end with an answer in the agent-tuned form that names the new images.
Free-text arguments (phrase, instruction, query) must be exact too: ``ChatSeedX`` decodes them with
``CopyArguments`` (on by default for the compact protocol), so they quote the request; without it the
miniature copied them only partly (``seedx-agent eval mini --tasks agent --no-copy-arguments``).
"""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from seedx_agent.graphs.chat_agent import create_chat_agent, seedx_agent_options, seedx_planner
from seedx_agent.memory import ImageMemory
from seedx_agent.tools import ChatSeedX, make_seedx_tools

from seedx_agent.engine import SeedXEngine
from seedx_agent.miniature import world
from seedx_agent.miniature.tool_dialogs import RECALL_K
from seedx_agent.model import SeedX

NAMESPACE = "user:test/thread:mini-planner"
SCENE = world.Scene(
    shapes=(world.Shape("circle", "red", "large", (0, 0)), world.Shape("square", "green", "small", (2, 2)))
)


@pytest.fixture(scope="module")
def engine() -> SeedXEngine:
    return SeedXEngine(SeedX.from_pretrained("mini", variants=("seed-x-i", "seed-x-edit")))


def _turn(graph, config: dict, request: str) -> tuple[AIMessage, ToolMessage, AIMessage]:
    before = len(graph.get_state(config).values.get("messages", [])) if graph.get_state(config).values else 0
    graph.invoke({"messages": [HumanMessage(request)]}, config, durability="sync")
    new = graph.get_state(config).values["messages"][before + 1 :]  # after the request itself
    assert [type(m).__name__ for m in new] == ["AIMessage", "ToolMessage", "AIMessage"], [m.content for m in new]
    call, result, answer = new
    assert len(call.tool_calls) == 1 and not call.invalid_tool_calls and not answer.tool_calls
    assert result.status == "success", result.content
    return call, result, answer


def test_the_miniature_plans_describe_ground_edit_recall(engine: SeedXEngine, memory: ImageMemory) -> None:
    planner = seedx_planner(engine, memory, NAMESPACE)
    assert isinstance(planner, ChatSeedX) and planner.tool_specs == "compact"
    image_id = memory.add(world.render(SCENE, 64), kind="input", namespace=NAMESPACE).id
    tools = make_seedx_tools(engine, memory, namespace=NAMESPACE, default_steps=4)
    graph = create_chat_agent(planner, tools, checkpointer=InMemorySaver(), **seedx_agent_options(engine))
    config = {"configurable": {"thread_id": "mini"}}

    call, result, answer = _turn(graph, config, f"Describe {image_id}.")
    assert (call.tool_calls[0]["name"], call.tool_calls[0]["args"]) == (
        "comprehend",
        {"image_ids": [image_id], "question": world.CAPTION_QUESTION},
    )
    assert answer.content and image_id not in answer.content

    call, result, answer = _turn(graph, config, f"Where is the red circle in {image_id}?")
    assert call.tool_calls[0]["name"] == "ground"
    assert call.tool_calls[0]["args"] == {"image_id": image_id, "phrase": "the red circle"}
    assert answer.content.startswith(("Found ", "No box found"))

    call, result, answer = _turn(graph, config, f"Edit {image_id}: make the red circle blue")
    assert call.tool_calls[0]["name"] == "edit_image"
    assert call.tool_calls[0]["args"] == {"image_id": image_id, "instruction": "make the red circle blue"}
    edited = result.artifact["image_id"]
    assert answer.content == f"Here is the edited image: {edited}."  # the #2 handle mapped back to the new id
    assert [record.id for record in memory.lineage(edited)] == [image_id, edited]

    call, result, answer = _turn(graph, config, "Find earlier images of a blue circle at the top left.")
    assert call.tool_calls[0]["name"] == "recall_images"
    assert call.tool_calls[0]["args"] == {"query": "a blue circle at the top left", "k": RECALL_K}
    found = [item["image_id"] for item in result.artifact["images"]]
    assert len(found) == RECALL_K
    assert answer.content == f"Best match: {found[0]}. Also: {found[1]}."
    assert len(graph.get_state(config).values["messages"]) == 16  # the thread keeps all four exchanges
