"""InlineToolNode: a lone tool call runs on the node's thread and gives exactly what ToolNode gives."""

from __future__ import annotations

import threading

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, ToolRuntime
from langgraph.store.memory import InMemoryStore
from seedx_agent.graphs.tool_node import INLINE_SUPPORTED, InlineToolNode

THREADS: list[str] = []


@tool
def add_numbers(a: int, b: int) -> int:
    """Add two integers."""
    THREADS.append(threading.current_thread().name)
    return a + b


@tool
def fail(reason: str) -> str:
    """Always raises."""
    raise ValueError(f"failed because {reason}")


@tool
def inspect_runtime(label: str, runtime: ToolRuntime) -> str:
    """Reports what the injected runtime carries."""
    stored = runtime.store.get(("notes",), "n1") if runtime.store is not None else None
    return f"{label}: {len(runtime.state['messages'])} messages, call {runtime.tool_call_id}, note {stored.value['v']}"


TOOLS = [add_numbers, fail, inspect_runtime]


def _graph(node_class: type[ToolNode], **kwargs: object):
    store = InMemoryStore()
    store.put(("notes",), "n1", {"v": "kept"})
    builder = StateGraph(MessagesState)
    builder.add_node("tools", node_class(TOOLS, **kwargs))
    builder.add_edge(START, "tools")
    builder.add_edge("tools", END)
    return builder.compile(store=store)


def _run(node_class: type[ToolNode], calls: list[dict], **kwargs: object) -> list[ToolMessage]:
    message = AIMessage(content="", tool_calls=[{**call, "type": "tool_call"} for call in calls])
    out = _graph(node_class, **kwargs).invoke({"messages": [message]})
    return [m for m in out["messages"] if isinstance(m, ToolMessage)]


def _fields(messages: list[ToolMessage]) -> list[tuple]:
    return [(m.content, m.name, m.tool_call_id, m.status) for m in messages]


CASES = {
    "ok": [{"name": "add_numbers", "args": {"a": 2, "b": 3}, "id": "c1"}],
    "tool error": [{"name": "fail", "args": {"reason": "testing"}, "id": "c2"}],
    "unknown tool": [{"name": "nope", "args": {}, "id": "c3"}],
    "bad args": [{"name": "add_numbers", "args": {"a": "x"}, "id": "c4"}],
    "runtime injection": [{"name": "inspect_runtime", "args": {"label": "L"}, "id": "c5"}],
    "two calls": [
        {"name": "add_numbers", "args": {"a": 1, "b": 1}, "id": "c6"},
        {"name": "inspect_runtime", "args": {"label": "M"}, "id": "c7"},
    ],
}


def test_inline_path_is_available_on_this_langgraph() -> None:
    assert INLINE_SUPPORTED, "a ToolNode helper InlineToolNode relies on is gone: it now always falls back"


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_messages_as_toolnode(case: str) -> None:
    ours = _run(InlineToolNode, CASES[case], handle_tool_errors=True)
    theirs = _run(ToolNode, CASES[case], handle_tool_errors=True)
    assert _fields(ours) == _fields(theirs)
    assert len(ours) == len(CASES[case])
    if case == "ok":
        assert ours[0].content == "5"
    if case == "tool error":
        assert ours[0].status == "error" and "failed because testing" in ours[0].content
    if case == "runtime injection":
        assert ours[0].content == "L: 1 messages, call c5, note kept"


def test_unhandled_tool_errors_propagate_as_from_toolnode() -> None:
    for node_class in (InlineToolNode, ToolNode):
        with pytest.raises(ValueError, match="failed because testing"):
            _run(node_class, CASES["tool error"])


def test_lone_call_runs_on_the_node_thread_and_several_use_the_pool() -> None:
    THREADS.clear()
    _run(ToolNode, CASES["ok"])
    assert THREADS[-1].startswith("ThreadPoolExecutor")  # what InlineToolNode avoids
    _run(InlineToolNode, CASES["ok"])
    assert not THREADS[-1].startswith("ThreadPoolExecutor")
    _run(InlineToolNode, [*CASES["ok"], {"name": "add_numbers", "args": {"a": 0, "b": 0}, "id": "c8"}])
    assert all(name.startswith("ThreadPoolExecutor") for name in THREADS[-2:])


def test_wrap_tool_call_still_wraps_the_lone_call() -> None:
    seen: list[str] = []

    def wrap(request, execute):
        seen.append(request.tool_call["name"])
        result = execute(request)
        return ToolMessage(content=f"wrapped {result.content}", tool_call_id=result.tool_call_id, name=result.name)

    (message,) = _run(InlineToolNode, CASES["ok"], wrap_tool_call=wrap)
    assert seen == ["add_numbers"] and message.content == "wrapped 5"
