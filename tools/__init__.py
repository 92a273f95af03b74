"""LangChain tools over SEED-X (``seedx_agent.tools``): thin adapters from tool calls to the engine and memory.

``make_seedx_tools(engine, memory, namespace=...)`` returns comprehend / ground / generate_image / edit_image /
recall_images; ``ChatSeedX`` is SEED-X-I as a chat model. Images go in and out only as ``seedx_agent.memory`` ids.
"""

from __future__ import annotations

from .chat_model import ChatSeedX, UnsupportedContentError, parse_tool_calls
from .seedx_tools import (
    MAX_RECALL_K,
    ComprehendArgs,
    EditImageArgs,
    GenerateImageArgs,
    GroundArgs,
    RecallImagesArgs,
    SeedXToolbox,
    annotate_boxes,
    make_seedx_tools,
    memory_image_embedder,
)

__all__ = [
    "MAX_RECALL_K",
    "ChatSeedX",
    "ComprehendArgs",
    "EditImageArgs",
    "GenerateImageArgs",
    "GroundArgs",
    "RecallImagesArgs",
    "SeedXToolbox",
    "UnsupportedContentError",
    "annotate_boxes",
    "make_seedx_tools",
    "memory_image_embedder",
    "parse_tool_calls",
]
