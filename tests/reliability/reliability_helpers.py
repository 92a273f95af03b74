"""Helpers shared by the reliability tests (importable by name, like tests/memory/memory_helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool

NAMESPACE = "user:reliability/thread:1"


def call_tool(tool: BaseTool, args: dict, call_id: str = "call-1") -> ToolMessage:
    """Invoke ``tool`` the way ToolNode does (a tool call dict), returning its ToolMessage."""
    message = tool.invoke({"type": "tool_call", "id": call_id, "name": tool.name, "args": args})
    assert isinstance(message, ToolMessage)
    return message


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of every file below ``root`` (for 'nothing changed' checks)."""
    snapshot = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            try:
                stat = path.stat()
            except FileNotFoundError:  # a file removed while walking (e.g. a chroma temp file)
                continue
            snapshot[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return snapshot
