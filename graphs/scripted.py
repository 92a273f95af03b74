"""``ScriptedPlanner``: a chat model that replays a fixed list of AI turns, for deterministic pipelines and tests.

It is a real ``BaseChatModel`` (so it runs inside LangGraph like any planner, with callbacks, streaming and
tracing), but its answers come from a script instead of a language model: useful to run a known sequence of
tool calls (a batch job, a demo, a regression test) through the same graph a live planner would drive.

Each turn is an ``AIMessage`` (usually with ``tool_calls``) or a callable ``(messages) -> AIMessage``. String
tool arguments equal to ``"$last_image_id"`` are replaced by the newest image id seen in the conversation (a
tool artifact's ``image_id``, or an ``img_...`` id written in a human message), so a script can say "edit the
image that was just generated" without knowing its random id in advance.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import PrivateAttr

from seedx_agent.errors import ConfigError, SeedXError

__all__ = ["LAST_IMAGE_ID", "ScriptExhaustedError", "ScriptedPlanner", "ScriptedTurn"]

LAST_IMAGE_ID = "$last_image_id"
ScriptedTurn = AIMessage | Callable[[list[BaseMessage]], AIMessage]
_IMAGE_ID_RE = re.compile(r"img_[0-9a-f]{16}")


class ScriptExhaustedError(SeedXError, RuntimeError):
    """The planner was asked for more turns than its script holds."""


def _newest_image_id(messages: Sequence[BaseMessage]) -> str | None:
    for message in reversed(messages):
        if isinstance(message, ToolMessage) and isinstance(message.artifact, dict):
            image_id = message.artifact.get("image_id")
            if isinstance(image_id, str):
                return image_id
        elif isinstance(message, HumanMessage) and isinstance(message.content, str):
            found = _IMAGE_ID_RE.findall(message.content)
            if found:
                return found[-1]
    return None


def _tool_name(tool: Any) -> str:
    if isinstance(tool, BaseTool):
        return tool.name
    return convert_to_openai_tool(tool)["function"]["name"]


class ScriptedPlanner(BaseChatModel):
    """Replays ``turns`` in order, one per call; ``bind_tools`` checks the scripted tool names and returns itself."""

    turns: list[Any]
    """The AI turns: ``AIMessage`` objects or callables ``(messages) -> AIMessage``."""

    _position: int = PrivateAttr(default=0)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def from_json(cls, source: str | Path | list[dict[str, Any]]) -> ScriptedPlanner:
        """Build from a JSON file (or its parsed list) of ``{"content": str, "tool_calls": [{"name", "args"}]}``."""
        if isinstance(source, (str, Path)):
            path = Path(source)
            try:
                source = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise ConfigError(f"planner script {str(path)!r} is not a readable JSON file: {error}") from error
        if not isinstance(source, list):
            raise ConfigError(f"a planner script is a JSON list of turns, got {type(source).__name__}")
        turns = []
        for index, item in enumerate(source):
            if not isinstance(item, dict) or not set(item) <= {"content", "tool_calls"}:
                raise ConfigError(
                    f"planner script turn {index} must be an object with 'content' and/or 'tool_calls', got {item!r}"
                )
            calls = item.get("tool_calls", [])
            if not isinstance(calls, list) or not all(
                isinstance(call, dict) and isinstance(call.get("name"), str) and isinstance(call.get("args", {}), dict)
                for call in calls
            ):
                raise ConfigError(
                    f"planner script turn {index}: tool_calls must be a list of {{'name': str, 'args': {{...}}}}"
                )
            turns.append(
                AIMessage(
                    content=str(item.get("content", "")),
                    tool_calls=[
                        {"name": call["name"], "args": call.get("args", {}), "id": call.get("id")} for call in calls
                    ],
                )
            )
        return cls(turns=turns)

    @property
    def _llm_type(self) -> str:
        return "scripted-planner"

    @property
    def position(self) -> int:
        """How many turns have been replayed."""
        return self._position

    @property
    def remaining(self) -> int:
        """How many turns are left."""
        return len(self.turns) - self._position

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[Any, AIMessage]:
        """Check that every statically scripted tool call names a bound tool, then return ``self``."""
        names = {_tool_name(tool) for tool in tools}
        for index, turn in enumerate(self.turns):
            if isinstance(turn, AIMessage):
                unknown = sorted({call["name"] for call in turn.tool_calls} - names)
                if unknown:
                    raise ConfigError(
                        f"scripted turn {index} calls unknown tool(s) {unknown}; bound tools are {sorted(names)}"
                    )
        return self

    def _next_turn(self, messages: list[BaseMessage]) -> AIMessage:
        with self._lock:
            position = self._position
            if position >= len(self.turns):
                raise ScriptExhaustedError(
                    f"the planner script has {len(self.turns)} turn(s) and all were used; add a final turn without "
                    "tool_calls to end the conversation"
                )
            self._position += 1
        turn = self.turns[position]
        message = turn(messages) if callable(turn) and not isinstance(turn, AIMessage) else turn
        if not isinstance(message, AIMessage):
            raise ConfigError(f"scripted turn {position} produced {type(message).__name__}; it must be an AIMessage")
        newest = _newest_image_id(messages)
        calls = []  # missing call ids get fresh random ones: ids must stay unique within a thread
        for call in message.tool_calls:
            args = {}
            for key, value in call["args"].items():
                if value == LAST_IMAGE_ID:
                    if newest is None:
                        raise ConfigError(
                            f"scripted turn {position} uses {LAST_IMAGE_ID} for {call['name']}.{key} but no image id "
                            "has appeared in the conversation yet"
                        )
                    value = newest
                args[key] = value
            calls.append({"name": call["name"], "args": args, "id": call.get("id") or f"call_{uuid.uuid4().hex[:16]}"})
        return AIMessage(content=message.content, tool_calls=calls, id=message.id)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._next_turn(messages))])
