"""LangGraph graphs over the SEED-X tools (``seedx_agent.graphs``): the chat agent and the story, slides and
refine workflows (planned by any chat model through ``planning``).

Each ``create_*`` factory returns a compiled graph. Names are imported lazily, so ``seedx_agent.graphs.cli_chat``
(imported by the CLI) does not pull LangGraph in until a graph command actually runs.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ChatAgentState",
    "ChatModelPlanner",
    "PlannerOutputError",
    "RefineState",
    "ScriptedPlanner",
    "SlidesState",
    "StoryState",
    "create_chat_agent",
    "create_refine_graph",
    "create_slides_graph",
    "create_story_graph",
    "load_engine",
    "load_planner",
    "make_slides_graph",
    "make_story_graph",
    "open_memory",
]

_HOMES = {
    "ChatAgentState": "chat_agent",
    "create_chat_agent": "chat_agent",
    "RefineState": "refine",
    "create_refine_graph": "refine",
    "ScriptedPlanner": "scripted",
    "ChatModelPlanner": "planning",
    "PlannerOutputError": "planning",
    "load_planner": "runtime",
    "load_engine": "runtime",
    "open_memory": "runtime",
    "StoryState": "story",
    "create_story_graph": "story",
    "make_story_graph": "story",
    "SlidesState": "slides",
    "create_slides_graph": "slides",
    "make_slides_graph": "slides",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
