"""The graph factories that ``langgraph.json`` names for the LangGraph server (``langgraph dev`` / ``up``).

The server calls a graph's factory for every run, ``get_state``, ``/schemas`` and ``/graph`` request, on its
event loop. So each factory here is ``async``: it builds its graph (``make_*_graph`` of the graph's module) in a
worker thread, and those share one engine and one image memory for the whole process
(``runtime.shared_engine_and_memory_from_env``: loaded once under a lock, then the same objects), so a request
made while a run is in flight reuses them instead of reopening the memory. Nothing blocks the event loop: the
dev server's blocking-call guard stays on (no ``--allow-blocking``).

When the LangGraph server imports this module (it imports graph modules in a worker thread at start-up and sets
``LANGSERVE_GRAPHS``), the engine and memory are loaded right away: a bad ``SEEDX_MODEL`` fails the start-up,
and the first run does not wait for the model. Imported anywhere else, it loads nothing until a factory runs.

Settings are the environment variables of the graphs' ``make_*_graph`` (``SEEDX_MODEL``, ``SEEDX_MEMORY_DIR``,
``SEEDX_PLANNER``, ``SEEDX_NAMESPACE``, ``SEEDX_STORY_OUT``, ...).
"""

from __future__ import annotations

import asyncio
import os

from langgraph.graph.state import CompiledStateGraph
from seedx_agent.graphs.runtime import shared_engine_and_memory_from_env

__all__ = ["make_chat_graph", "make_refine_graph", "make_slides_graph", "make_story_graph"]


async def make_chat_graph() -> CompiledStateGraph:
    """The chat agent (``chat_agent.make_chat_graph``), built in a worker thread."""
    from seedx_agent.graphs.chat_agent import make_chat_graph as build

    return await asyncio.to_thread(build)


async def make_story_graph() -> CompiledStateGraph:
    """The story workflow (``story.make_story_graph``), built in a worker thread."""
    from seedx_agent.graphs.story import make_story_graph as build

    return await asyncio.to_thread(build)


async def make_slides_graph() -> CompiledStateGraph:
    """The slides workflow (``slides.make_slides_graph``), built in a worker thread."""
    from seedx_agent.graphs.slides import make_slides_graph as build

    return await asyncio.to_thread(build)


async def make_refine_graph() -> CompiledStateGraph:
    """The refine workflow (``refine.make_refine_graph``), built in a worker thread."""
    from seedx_agent.graphs.refine import make_refine_graph as build

    return await asyncio.to_thread(build)


def _started_by_langgraph_server() -> bool:
    return bool(os.environ.get("LANGSERVE_GRAPHS"))


if _started_by_langgraph_server():  # the server imports graph modules in a worker thread: load here, once
    shared_engine_and_memory_from_env()
