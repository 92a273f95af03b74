"""LangGraph graphs over the SEED-X tools (``seedx_agent.graphs``): the chat agent and the story, slides and
refine workflows (planned by any chat model through ``planning``). Each ``create_*`` factory returns a compiled
graph."""

from __future__ import annotations

from .chat_agent import ChatAgentState, create_chat_agent
from .planning import ChatModelPlanner, PlannerOutputError
from .refine import RefineState, create_refine_graph
from .runtime import load_engine, load_planner, open_memory
from .scripted import ScriptedPlanner
from .slides import SlidesState, create_slides_graph, make_slides_graph
from .story import StoryState, create_story_graph, make_story_graph

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
