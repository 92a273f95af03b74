"""Rendering for ``ChatSeedX``: LangChain messages in, SEED-X turns out, and model answers back into tool calls.

Reading content blocks (text and images in every LangChain/OpenAI form, memory ids), rendering a conversation
into SEED-X-I's user/assistant turns (system preamble, tool specs, tool calls and defused tool results), the
tool-call parser and the display text. See ``seedx_agent.tools.chat_model`` for the protocol; everything here
is a pure function of its arguments (no model).

AI messages in the history may carry their tool calls in any provider's shape: ``tool_calls`` (LangChain),
Anthropic ``tool_use`` content blocks, OpenAI Responses ``function_call`` blocks (``arguments`` as a JSON
string), v1 ``tool_call`` blocks, or OpenAI's ``additional_kwargs`` (``function_call``, ``tool_calls``). Each call
is replayed once in the protocol's wire form (the same call in two shapes is recognised by its id); reasoning
and thinking blocks are dropped.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import PIL.Image
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    InvalidToolCall,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call
from seedx_agent.memory import ImageMemory, UnknownImageError

from seedx_agent.errors import ConfigError, InvalidImageError, InvalidPromptError
from seedx_agent.model import ChatMessage
from seedx_agent.pipeline.images import load_image
from seedx_agent.pipeline.tokens import strip_tags
from seedx_agent.protocol.parsing import lenient_json, split_tool_calls
from seedx_agent.protocol.tool_calls import (
    SpecStyle,
    system_preamble,
    tool_call_text,
    tool_result_text,
    tool_specs_text,
)

__all__ = [
    "ParsedToolCalls",
    "UnsupportedContentError",
    "history_tool_calls",
    "load_image_block",
    "parse_tool_calls",
    "render_messages",
    "render_tool_call",
    "render_tool_result",
    "render_tool_specs",
    "tool_choice_name",
    "visible_text",
]

logger = logging.getLogger(__name__)

# v1 blocks of an AI message that are not replayed as text: calls come from ``history_tool_calls``.
_SKIPPED_AI_BLOCKS = frozenset({"tool_call", "tool_call_chunk", "invalid_tool_call", "reasoning"})
# Provider blocks LangChain leaves as ``non_standard``: calls (read by ``history_tool_calls``) and reasoning.
_SKIPPED_PROVIDER_BLOCKS = frozenset({"tool_use", "function_call", "thinking", "redacted_thinking"})


class UnsupportedContentError(InvalidPromptError):
    """A message holds content ChatSeedX cannot read (a non-image block, an http URL, an unknown message type)."""


# ---------------------------------------------------------------------------------------------- input content


def load_image_block(block: Mapping[str, Any], *, memory: ImageMemory, namespace: str, where: str) -> PIL.Image.Image:
    """Pixels of one v1 image block: a memory ``file_id``, ``base64`` data or a ``data:`` URL (never fetched)."""
    mime_type = block.get("mime_type")
    if mime_type is not None and not str(mime_type).startswith("image/"):
        raise UnsupportedContentError(f"{where}: mime_type {mime_type!r} is not an image type; use image/png etc.")
    if block.get("file_id") is not None:
        image_id = block["file_id"]
        try:
            return memory.load(image_id, namespace=namespace)
        except UnknownImageError as error:
            raise type(error)(
                f"{where}: {error}. Use an image id issued by the memory in namespace {namespace!r}", image_id=image_id
            ) from error
    try:
        if block.get("base64") is not None:
            data = block["base64"]
            if not isinstance(data, str):
                raise InvalidImageError(f"base64 data must be a string, got {type(data).__name__}")
            try:
                raw = base64.b64decode("".join(data.split()), validate=True)
            except (binascii.Error, ValueError) as error:
                raise InvalidImageError(f"invalid base64 image data ({error}); encode the image bytes") from error
            return load_image(raw)
        url = block.get("url")
        if url is not None:
            if not isinstance(url, str) or not url.startswith("data:"):
                shown = str(url)[:80]
                raise UnsupportedContentError(
                    f"{where}: image URL {shown!r} is not read: images are never downloaded. Pass the bytes as "
                    "base64 (a data: URL or a 'base64' block) or a memory image id as 'file_id'"
                )
            return load_image(url)
    except InvalidImageError as error:
        raise type(error)(f"{where}: {error}") from error
    raise UnsupportedContentError(f"{where}: image block {dict(block)!r:.120} has no 'file_id', 'base64' or 'url'")


def _image_block(block: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The v1 image block in ``block``, also for the legacy ``image_url`` whose value is a bare string."""
    if block.get("type") == "image":
        return block
    if block.get("type") == "non_standard":
        value = block.get("value")
        if isinstance(value, Mapping) and value.get("type") == "image_url":
            inner = value.get("image_url")
            url = inner.get("url") if isinstance(inner, Mapping) else inner
            return {"type": "image", "url": url}
    return None


def _block_type(block: Mapping[str, Any]) -> str:
    value = block.get("value")
    if block.get("type") == "non_standard" and isinstance(value, Mapping):
        return str(value.get("type"))
    return str(block.get("type"))


def _read_content(
    message: BaseMessage, where: str, *, memory: ImageMemory, namespace: str, allow_images: bool
) -> tuple[str, list[PIL.Image.Image]]:
    """Text (blocks joined by newlines) and images of a human, system or tool message."""
    texts: list[str] = []
    images: list[PIL.Image.Image] = []
    for index, block in enumerate(message.content_blocks):
        here = f"{where}, content block {index}"
        if block.get("type") == "text":
            texts.append(str(block.get("text", "")))
            continue
        image = _image_block(block)
        if image is None:
            raise UnsupportedContentError(
                f"{here}: content block type {_block_type(block)!r} is not supported; send text blocks and image "
                "blocks ({'type': 'image', 'base64'|'url': 'data:...'|'file_id': 'img_...'})"
            )
        if not allow_images:
            raise UnsupportedContentError(
                f"{here}: {type(message).__name__} cannot carry images; put them in a human message"
            )
        images.append(load_image_block(image, memory=memory, namespace=namespace, where=here))
    return "\n".join(text for text in texts if text), images


# ---------------------------------------------------------------------------------------------- rendering


def render_tool_result(message: ToolMessage, text: str) -> str:
    """A tool message's text as a delimited DATA block (see the module docstring)."""
    return tool_result_text(message.name, message.tool_call_id, message.status, text)


def render_tool_call(call: ToolCall) -> str:
    """One tool call in the protocol's wire form."""
    return tool_call_text(call["name"], call["args"])


def tool_choice_name(tool_choice: Any) -> str | None:
    """Normalise ``tool_choice`` to None/"any"/"none"/a tool name; raise for anything else."""
    if tool_choice is None or tool_choice == "auto" or tool_choice is False:
        return None
    if tool_choice in ("any", "required") or tool_choice is True:
        return "any"
    if tool_choice == "none":
        return "none"
    if isinstance(tool_choice, str):
        return tool_choice
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else tool_choice.get("name")
        if isinstance(name, str):
            return name
    raise ConfigError(
        f"tool_choice {tool_choice!r} is not supported; use None/'auto', 'any'/'required', 'none' or a tool name"
    )


def render_tool_specs(
    tools: Sequence[Mapping[str, Any]], tool_choice: str | None = None, style: SpecStyle = "full"
) -> str:
    """The tool section of the system preamble: ``full`` specs or ``compact`` signatures, then the protocol."""
    return tool_specs_text(tools, tool_choice, style)


def _call_args(value: Any, where: str) -> dict[str, Any]:
    """A call's arguments given as an object or as JSON text (OpenAI's ``arguments``)."""
    if isinstance(value, str):
        try:
            value = lenient_json(value) if value.strip() else {}
        except ValueError as error:
            raise UnsupportedContentError(
                f"{where}: tool call arguments {value!r:.80} are not JSON ({error})"
            ) from error
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UnsupportedContentError(f"{where}: tool call arguments must be an object, got {type(value).__name__}")
    return dict(value)


def history_tool_calls(message: AIMessage, where: str = "AI message") -> list[tuple[str, dict[str, Any]]]:
    """(name, args) of every tool call ``message`` records, once each (see the module docstring): its
    ``tool_calls`` first, then calls found only in content blocks or ``additional_kwargs``."""
    calls: list[tuple[str, dict[str, Any]]] = []
    seen_ids: set[str] = set()

    def add(name: Any, args: Any, *ids: Any) -> None:
        known = [str(i) for i in ids if i]
        if any(i in seen_ids for i in known):
            return
        if not isinstance(name, str) or not name.strip():
            raise UnsupportedContentError(f"{where}: a tool call without a name ({args!r:.80})")
        call = (name, _call_args(args, where))
        if not known and call in calls:  # the same call without an id (OpenAI's legacy function_call)
            return
        seen_ids.update(known)
        calls.append(call)

    for call in message.tool_calls:
        add(call["name"], call["args"], call.get("id"))
    for block in message.content if isinstance(message.content, list) else []:
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if kind == "tool_use":  # Anthropic
            add(block.get("name"), block.get("input"), block.get("id"))
        elif kind == "function_call":  # OpenAI Responses
            add(block.get("name"), block.get("arguments"), block.get("call_id"), block.get("id"))
        elif kind == "tool_call":  # LangChain v1
            add(block.get("name"), block.get("args"), block.get("id"))
    legacy = message.additional_kwargs.get("function_call")
    if isinstance(legacy, Mapping):  # OpenAI Chat Completions, legacy function calling
        add(legacy.get("name"), legacy.get("arguments"))
    for raw in message.additional_kwargs.get("tool_calls") or ():  # OpenAI Chat Completions, raw
        function = raw.get("function") if isinstance(raw, Mapping) else None
        if isinstance(function, Mapping):
            add(function.get("name"), function.get("arguments"), raw.get("id"))
    return calls


def _assistant_text(message: AIMessage, where: str) -> str:
    parts: list[str] = []
    for index, block in enumerate(message.content_blocks):
        kind = block.get("type")
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif kind == "image":
            parts.append(f"[image {block.get('file_id') or 'without id'}]")
        elif kind == "non_standard" and _block_type(block) in _SKIPPED_PROVIDER_BLOCKS:
            continue
        elif kind not in _SKIPPED_AI_BLOCKS:
            raise UnsupportedContentError(
                f"{where}, content block {index}: AI content block type {_block_type(block)!r} is not supported; AI "
                "messages may hold text, memory image ids, tool calls (any provider's form) and reasoning"
            )
    text = " ".join(part.strip() for part in parts if part.strip())
    calls = "\n".join(tool_call_text(name, args) for name, args in history_tool_calls(message, where))
    return "\n".join(part for part in (text, calls) if part)


def render_messages(
    messages: Sequence[BaseMessage],
    *,
    memory: ImageMemory,
    namespace: str,
    tools: Sequence[Mapping[str, Any]] = (),
    tool_choice: str | None = None,
    tool_specs: SpecStyle = "full",
) -> list[ChatMessage]:
    """LangChain messages -> SEED-X ``ChatMessage`` turns (see the module docstring); images from memory/data."""
    system_parts: list[str] = []
    turns: list[ChatMessage] = []
    pending_text: list[str] = []
    pending_images: list[PIL.Image.Image] = []

    def flush_user() -> None:
        if pending_text or pending_images:
            turns.append(ChatMessage("user", "\n\n".join(pending_text), tuple(pending_images)))
            pending_text.clear()
            pending_images.clear()

    for index, message in enumerate(messages):
        where = f"message {index} ({type(message).__name__})"
        if isinstance(message, SystemMessage):
            text, _ = _read_content(message, where, memory=memory, namespace=namespace, allow_images=False)
            system_parts.append(text)
        elif isinstance(message, HumanMessage):
            text, images = _read_content(message, where, memory=memory, namespace=namespace, allow_images=True)
            pending_text.extend([text] if text else [])
            pending_images.extend(images)
        elif isinstance(message, ToolMessage):
            text, images = _read_content(message, where, memory=memory, namespace=namespace, allow_images=True)
            pending_text.append(render_tool_result(message, text))
            pending_images.extend(images)
        elif isinstance(message, AIMessage):
            flush_user()
            turns.append(ChatMessage("assistant", _assistant_text(message, where)))
        else:
            raise UnsupportedContentError(
                f"{where}: message type {type(message).__name__} is not supported; use System, Human, AI or Tool "
                "messages"
            )
    flush_user()
    if not turns or turns[-1].role != "user":
        raise InvalidPromptError(
            "the conversation must end with a human or tool message (SEED-X answers the last user turn); "
            f"got {len(messages)} message(s) ending with {type(messages[-1]).__name__ if messages else 'nothing'}"
        )
    if turns[0].role != "user":
        raise InvalidPromptError("the conversation must start with a human message (after any system messages)")
    if tools and tool_choice != "none":
        system_parts.append(render_tool_specs(tools, tool_choice, tool_specs))
    preamble = system_preamble(system_parts)
    if preamble:
        first = turns[0]
        turns[0] = ChatMessage("user", preamble + first.text, first.images)
    return turns


# ---------------------------------------------------------------------------------------------- tool-call parser


@dataclass
class ParsedToolCalls:
    """A model answer split into its text (tool-call spans removed) and the calls found in it."""

    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)


def parse_tool_calls(text: str, tool_names: Collection[str] | None = None) -> ParsedToolCalls:
    """Every ``<tool_call>{...}</tool_call>`` span of ``text`` (an unclosed last one included) as LangChain tool
    calls (``protocol.parsing.split_tool_calls``); unreadable ones become invalid calls whose ``args`` is the span
    as written. The returned ``text`` is ``text`` with the spans removed."""
    parsed = split_tool_calls(text, tool_names)
    return ParsedToolCalls(
        text=parsed.text,
        tool_calls=[tool_call(name=call.name, args=call.args, id=call.id) for call in parsed.calls],
        invalid_tool_calls=[
            invalid_tool_call(name=bad.name, args=bad.raw, id=bad.id, error=bad.error) for bad in parsed.invalid
        ],
    )


# ---------------------------------------------------------------------------------------------- display text


def _cut_at_stop(raw: str, stop: Sequence[str], *, final: bool) -> str:
    """``raw`` up to the first stop string; while streaming, also hold back a possible stop-string prefix."""
    hits = [raw.find(s) for s in stop if s and s in raw]
    if hits:
        return raw[: min(hits)]
    if not final:
        for s in stop:
            for size in range(min(len(s) - 1, len(raw)), 0, -1):
                if raw.endswith(s[:size]):
                    raw = raw[:-size]
                    break
    return raw


def visible_text(raw: str, *, parse_calls: bool, stop: Sequence[str] = (), final: bool = True) -> str:
    """The message text shown for raw model output: stop-truncated, tool-call spans removed, tags stripped.

    With ``final=False`` (a prefix while streaming) anything that may still turn into a tool call, a stop
    string or a multi-byte character is held back, so successive results extend each other.
    """
    raw = _cut_at_stop(raw, stop, final=final)
    if parse_calls:
        raw = parse_tool_calls(raw).text
    if not final:
        last_open = raw.rfind("<")
        if last_open >= 0 and ">" not in raw[last_open:]:  # a tag (or tool call) may be under way
            raw = raw[:last_open]
        raw = raw.rstrip("\ufffd")
    return strip_tags(raw)
