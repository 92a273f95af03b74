"""Reading tool calls out of model text: every ``<tool_call>{...}</tool_call>`` span (an unclosed last one too),
lenient about near-JSON (single quotes, Python literals, bare keys, trailing commas) and the OpenAI
``{"function": {...}}`` shape. Plain records, so the LangChain chat model and the HTTP API wrap them alike."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FoundCall", "ParsedCalls", "UnreadableCall", "lenient_json", "new_call_id", "split_tool_calls"]

_OPEN_RE = re.compile(r"<\s*tool_call\s*>", re.IGNORECASE)
_CALL_RE = re.compile(r"<\s*tool_call\s*>(.*?)<\s*/\s*tool_call\s*>", re.IGNORECASE | re.DOTALL)
_FENCE_RE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


@dataclass(frozen=True)
class FoundCall:
    """A readable call of a known tool."""

    name: str
    args: dict[str, Any]
    id: str


@dataclass(frozen=True)
class UnreadableCall:
    """A span that is not a valid call: ``raw`` is the span as written, ``error`` says why."""

    name: str | None
    raw: str
    id: str
    error: str


@dataclass
class ParsedCalls:
    """A model answer split into its text (call spans removed), the calls found and the unreadable ones."""

    text: str
    calls: list[FoundCall] = field(default_factory=list)
    invalid: list[UnreadableCall] = field(default_factory=list)


def _jsonish_to_json(text: str) -> str:
    """Rewrite near-JSON (single quotes, Python literals, bare keys, trailing commas) as JSON."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char in "\"'":
            j, piece = i + 1, []
            while j < n and text[j] != char:
                if text[j] == "\\" and j + 1 < n:
                    piece.append("'" if (char == "'" and text[j + 1] == "'") else text[j : j + 2])
                    j += 2
                    continue
                piece.append('\\"' if (text[j] == '"' and char == "'") else text[j])
                j += 1
            out.append('"' + "".join(piece) + '"')
            i = j + 1
            continue
        if char == ",":
            k = i + 1
            while k < n and text[k].isspace():
                k += 1
            if k < n and text[k] in "}]":
                i += 1
                continue
        if char.isalpha() or char == "_":
            word = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i:]).group(0)  # type: ignore[union-attr]
            rest = text[i + len(word) :].lstrip()
            if rest.startswith(":"):
                out.append(json.dumps(word))
            else:
                out.append({"True": "true", "False": "false", "None": "null"}.get(word, word))
            i += len(word)
            continue
        out.append(char)
        i += 1
    return "".join(out)


def lenient_json(text: str) -> Any:
    """``json.loads``, retried on the near-JSON rewrite (single quotes, Python literals, bare keys)."""
    try:
        return json.loads(text, strict=False)
    except ValueError:
        return json.loads(_jsonish_to_json(text), strict=False)


def _call_objects(body: str) -> list[Any]:
    """The call object(s) in one span body; raises ValueError when no JSON object can be read."""
    body = _FENCE_RE.sub("", body.strip())
    starts = [i for i in (body.find("{"), body.find("[")) if i >= 0]
    if not starts:
        raise ValueError("no JSON object found")
    start = min(starts)
    end = max(body.rfind("}"), body.rfind("]"))
    value = lenient_json(body[start : end + 1] if end > start else body[start:])
    calls = value if isinstance(value, list) else [value]
    if not calls or not all(isinstance(call, Mapping) for call in calls):
        raise ValueError(f"a tool call must be a JSON object (or a list of them), got {value!r:.80}")
    return calls


def _check_call(obj: Any, tool_names: Collection[str] | None) -> tuple[str, dict[str, Any]]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"a tool call must be a JSON object, got {type(obj).__name__}")
    function = obj.get("function")
    if isinstance(function, Mapping):  # OpenAI shape {"function": {"name", "arguments"}}
        obj = function
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError('the call has no "name"')
    args = next((obj[key] for key in ("args", "arguments", "parameters") if key in obj), {})
    if isinstance(args, str):
        args = lenient_json(args) if args.strip() else {}
    if not isinstance(args, Mapping):
        raise ValueError(f'"args" must be a JSON object, got {type(args).__name__}')
    name = name.strip()
    if tool_names is not None and name not in tool_names:
        raise ValueError(f"unknown tool {name!r}; available tools: {sorted(tool_names)}")
    return name, dict(args)


def new_call_id() -> str:
    """A fresh id in the OpenAI ``call_...`` form."""
    return f"call_{uuid.uuid4().hex[:24]}"


def split_tool_calls(text: str, tool_names: Collection[str] | None = None) -> ParsedCalls:
    """Every tool-call span of ``text`` as a call; spans naming a tool outside ``tool_names`` (when given) or that
    cannot be read become unreadable calls. The returned ``text`` is ``text`` with the spans removed."""
    spans: list[tuple[str, str]] = []  # (markup as written, body)
    kept: list[str] = []
    position = 0
    for match in _CALL_RE.finditer(text):
        kept.append(text[position : match.start()])
        spans.append((match.group(0), match.group(1)))
        position = match.end()
    rest = text[position:]
    unclosed = _OPEN_RE.search(rest)
    if unclosed is not None:
        kept.append(rest[: unclosed.start()])
        spans.append((rest[unclosed.start() :], rest[unclosed.end() :]))
    else:
        kept.append(rest)
    result = ParsedCalls(text="".join(kept))
    for markup, body in spans:
        try:
            objects = _call_objects(body)
        except ValueError as error:
            result.invalid.append(UnreadableCall(None, markup, new_call_id(), f"unreadable tool call: {error}"))
            continue
        for obj in objects:
            try:
                name, args = _check_call(obj, tool_names)
            except ValueError as error:
                raw_name = obj.get("name") if isinstance(obj, Mapping) else None
                result.invalid.append(
                    UnreadableCall(raw_name if isinstance(raw_name, str) else None, markup, new_call_id(), str(error))
                )
                continue
            result.calls.append(FoundCall(name, args, new_call_id()))
    return result
