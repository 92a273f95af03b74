"""``InlineToolNode``: LangGraph's ``ToolNode`` without a thread pool for a step with a single tool call.

``ToolNode`` hands every step's tool calls to a fresh thread pool, so each step starts a new thread. On a
small CPU that costs about a millisecond, half of LangGraph's whole overhead per tool call
(``benchmarks/bench_memory.py``, section 2), and a lone call gains nothing from it. This subclass runs a
lone call on the node's own thread through ToolNode's own steps (input parsing, ``ToolRuntime`` injection,
``wrap_tool_call``, error handling, output combining); several calls still go through ToolNode's pool. It
leans on four private ``ToolNode`` helpers; where a LangGraph release lacks one, every step falls back to
``ToolNode`` unchanged (``INLINE_SUPPORTED`` says which case holds).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list
from langgraph.prebuilt import ToolNode, ToolRuntime
from langgraph.runtime import Runtime

__all__ = ["INLINE_SUPPORTED", "InlineToolNode"]

_HELPERS = ("_parse_input", "_extract_state", "_run_one", "_combine_tool_outputs")
# ToolRuntime fields filled from the call itself; the rest are copied from the step's Runtime by name.
_PER_CALL = {"state", "tool_call_id", "config", "tools"}
INLINE_SUPPORTED = all(hasattr(ToolNode, name) for name in _HELPERS) and dataclasses.is_dataclass(ToolRuntime)


class InlineToolNode(ToolNode):
    """A ``ToolNode`` that runs a step's lone tool call on the calling thread (several calls: ToolNode's pool)."""

    # LangGraph passes ``config`` and ``runtime`` by these names and annotations, as to ToolNode's own ``_func``.
    def _func(self, input: Any, config: RunnableConfig, runtime: Runtime) -> Any:
        if not INLINE_SUPPORTED:
            return super()._func(input, config, runtime)
        tool_calls, input_type = self._parse_input(input)
        if len(tool_calls) != 1:
            return super()._func(input, config, runtime)
        call = tool_calls[0]
        call_config = get_config_list(config, 1)[0]
        shared = {
            field.name: getattr(runtime, field.name, None)
            for field in dataclasses.fields(ToolRuntime)
            if field.name not in _PER_CALL
        }
        tool_runtime = ToolRuntime(
            state=self._extract_state(input, call_config),
            tool_call_id=call["id"],
            config=call_config,
            tools=list(self.tools_by_name.values()),
            **shared,
        )
        return self._combine_tool_outputs([self._run_one(call, input_type, tool_runtime)], input_type)
