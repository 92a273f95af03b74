"""An OpenAI-compatible HTTP API over one SEED-X engine (FastAPI), for clients that do not speak LangChain.

Endpoints (the official ``openai`` Python client works against them with ``base_url=".../v1"``):

- ``POST /v1/chat/completions``: text and ``image_url`` inputs (``data:`` URLs only: nothing is ever downloaded),
  ``stream`` by server-sent events (``data: {chunk}`` lines, then ``data: [DONE]``; with
  ``stream_options.include_usage`` a last chunk carries the usage), ``tools`` / ``tool_choice`` with tool calls
  answered in the OpenAI format (``finish_reason="tool_calls"``) and ``tool`` messages read back, ``usage``
  counts. The model is ``ChatSeedX`` (the LangChain chat model of ``seedx_agent.tools``) on the shared engine;
  ``temperature`` defaults to 0 (greedy), ``n`` must be 1.
- ``POST /v1/images/generations`` (JSON) and ``POST /v1/images/edits`` (multipart, one ``image`` file): PNGs as
  ``b64_json``; ``size`` is ``"auto"`` or a square ``"NxN"``; ``seed`` and ``num_inference_steps`` may be sent
  as extra fields (``extra_body`` in the client).
- ``GET /v1/models`` (and ``/v1/models/{id}``): the one served model; ``GET /health``: liveness, no key needed.

Limits (``ServeSettings``): request body bytes (413), image pixels read from the header before any decoding,
images per request, ``max_tokens``, ``n``, output size and diffusion steps (400), and requests waiting for the
model (503). Every error has the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``; with an API
key set, a request to ``/v1`` without ``Authorization: Bearer <key>`` gets 401 ``invalid_api_key``.

Model work (decoding, diffusion, PNG encoding) runs in a thread pool of ``workers`` threads, never on the event
loop; the engine serialises calls per device, so extra workers only queue. A streaming client that disconnects
stops the decode loop at its next token.

``create_app(settings, backend=...)`` serves the same routes over another ``ModelBackend`` (``serving.ray_serve``:
Ray Serve deployments); the default ``LocalBackend`` is the model in this process.

Usage counts are ``ChatSeedX``'s ``usage_metadata``: the prompt ``SeedX.chat`` feeds (image tokens included)
and the tokens decoded; ``finish_reason`` is ``"length"`` when the answer used its whole token budget.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hmac
import io
import json
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import PIL.Image
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from seedx_agent.serving.settings import ServeSettings

from seedx_agent.errors import (
    CapabilityMissingError,
    ImageTooLargeError,
    InvalidImageError,
    ResourceExhaustedError,
    SeedXError,
)

__all__ = ["ApiError", "ChatEvents", "LocalBackend", "ModelBackend", "ServeSettings", "create_app"]

logger = logging.getLogger(__name__)

_SEED_LIMIT = 2**31
_TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DATA_URL_RE = re.compile(r"^data:(image/[A-Za-z0-9.+-]+)?(;[^,]*)?;base64,", re.IGNORECASE)
_SIZE_RE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


# ---------------------------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answered in the OpenAI shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # the OpenAI field name
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        """Picklable with its fields (it crosses processes in ``serving.ray_serve``)."""
        rebuild = functools.partial(ApiError, type=self.type, param=self.param, code=self.code)
        return rebuild, (self.status, self.message)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _from_library(error: BaseException) -> ApiError:
    """A library error as the HTTP error a client can act on."""
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, ImageTooLargeError):
        return ApiError(400, text, code="image_too_large")
    if isinstance(error, ResourceExhaustedError):
        return ApiError(503, text, type="server_error", code="server_overloaded")
    if isinstance(error, CapabilityMissingError):
        return ApiError(400, text, code="unsupported")
    if isinstance(error, InvalidImageError):
        return ApiError(400, text, code="invalid_image")
    if isinstance(error, SeedXError):
        code = "context_length_exceeded" if "exceeds the context" in text else None
        return ApiError(400, text, code=code)
    logger.error("request failed", exc_info=error)
    return ApiError(500, "the server failed to answer this request; see its log", type="server_error")


def _validation_error(error: ValidationError, prefix: str = "") -> ApiError:
    first = error.errors()[0]
    param = prefix
    for part in first.get("loc", ()):
        param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else str(part))
    message = first.get("msg", "invalid value")
    return ApiError(400, f"{param or 'body'}: {message}", param=param or None)


# ---------------------------------------------------------------------------------------------- request models


class _Lenient(BaseModel):
    """Fields the API does not use are accepted and ignored (clients send many)."""

    model_config = ConfigDict(extra="allow")


class FunctionSpec(_Lenient):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _TOOL_NAME_RE.fullmatch(name):
            raise ValueError("a function name is 1-64 letters, digits, '_' or '-'")
        return name

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, parameters: dict[str, Any] | None) -> dict[str, Any] | None:
        if parameters is None:
            return None
        if parameters.get("type", "object") != "object":
            raise ValueError("parameters must be a JSON schema of type 'object'")
        properties = parameters.get("properties", {})
        if not isinstance(properties, dict) or not all(isinstance(v, dict) for v in properties.values()):
            raise ValueError("parameters.properties must map argument names to JSON schemas (objects)")
        required = parameters.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise ValueError("parameters.required must be a list of argument names")
        return parameters


class ToolSpec(_Lenient):
    type: Literal["function"]
    function: FunctionSpec


class ChatCompletionRequest(_Lenient):
    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    seed: int | None = Field(default=None, ge=0, lt=_SEED_LIMIT)
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None


class ImageGenerationRequest(_Lenient):
    prompt: str = Field(min_length=1)
    model: str | None = None
    n: int | None = Field(default=None, ge=1)
    size: str | None = None
    response_format: str | None = None
    seed: int | None = Field(default=None, ge=0, lt=_SEED_LIMIT)
    num_inference_steps: int | None = Field(default=None, ge=1)


# ---------------------------------------------------------------------------------------------- the ASGI guard


class _Guard:
    """Pure ASGI middleware: the API key (``/v1`` paths) and the body limit, before anything reads the body.

    The body is read (at most ``max_body_bytes``) and handed on in one piece; a larger one, by its
    ``Content-Length`` or as it streams in, gets 413 without being read further."""

    def __init__(self, app: Any, settings: ServeSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        error = self._auth_error(scope)
        if error is None:
            error = self._declared_size_error(scope)
        if error is not None:
            await self._answer(scope, receive, send, error)
            return
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.settings.max_body_bytes:
                await self._answer(scope, receive, send, self._too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect, as the server would

        await self.app(scope, replay, send)

    def _auth_error(self, scope: dict[str, Any]) -> ApiError | None:
        key = self.settings.api_key
        if not key or not str(scope.get("path", "")).startswith("/v1"):
            return None
        header = _header(scope, b"authorization")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode()):
            return None
        if not header:
            message = "no API key given: send the header 'Authorization: Bearer <key>'"
        else:
            message = "incorrect API key provided"
        return ApiError(401, message, code="invalid_api_key")

    def _declared_size_error(self, scope: dict[str, Any]) -> ApiError | None:
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > self.settings.max_body_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            f"the request body is larger than this server's limit of {self.settings.max_body_bytes} bytes; send "
            "smaller images or fewer of them",
            code="request_too_large",
        )

    @staticmethod
    async def _answer(scope: dict[str, Any], receive: Callable, send: Callable, error: ApiError) -> None:
        await error.response()(scope, receive, send)


def _header(scope: Mapping[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


# ---------------------------------------------------------------------------------------------- the work pool


class _Workers:
    """Model work on a thread pool, with at most ``max_pending`` requests running or waiting (else 503)."""

    def __init__(self, workers: int, max_pending: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seedx-api")
        self.max_pending = max_pending
        self.pending = 0  # changed on the event loop only

    def admit(self) -> None:
        if self.pending >= self.max_pending:
            raise ApiError(
                503,
                f"the server is busy ({self.pending} requests running or waiting); retry later",
                type="server_error",
                code="server_overloaded",
            )
        self.pending += 1

    def release(self) -> None:
        self.pending -= 1

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        self.admit()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: function(*args))
        except ApiError:
            raise
        except Exception as error:
            raise _from_library(error) from error
        finally:
            self.release()


# ---------------------------------------------------------------------------------------------- images


def _png_b64(image: PIL.Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _check_pixels(data: bytes, settings: ServeSettings, where: str) -> tuple[int, int]:
    """The image's (width, height) from its header, before decoding; 400 when it is not an image or too big."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
    except (PIL.Image.DecompressionBombError, OSError, ValueError, SyntaxError) as error:
        if isinstance(error, PIL.Image.DecompressionBombError):
            raise ApiError(400, f"{where}: {error}", param=where, code="image_too_large") from None
        raise ApiError(400, f"{where}: not a readable image ({error})", param=where, code="invalid_image") from None
    if width * height > settings.max_image_pixels:
        raise ApiError(
            400,
            f"{where}: the image is {width}x{height} = {width * height} pixels, more than this server's limit of "
            f"{settings.max_image_pixels}; downscale it",
            param=where,
            code="image_too_large",
        )
    return width, height


def _data_url_bytes(url: object, where: str) -> tuple[str, bytes]:
    """(mime type, bytes) of a ``data:image/...;base64,`` URL; 400 for anything else (never downloaded)."""
    if not isinstance(url, str):
        raise ApiError(400, f"{where}: the image URL must be a string", param=where)
    match = _DATA_URL_RE.match(url)
    if match is None:
        shown = url[:60] + ("..." if len(url) > 60 else "")
        raise ApiError(
            400,
            f"{where}: only 'data:image/...;base64,' URLs are accepted (images are never downloaded), got {shown!r}",
            param=where,
            code="invalid_image_url",
        )
    try:
        data = base64.b64decode("".join(url[match.end() :].split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where}: the data URL holds invalid base64", param=where, code="invalid_image") from None
    return (match.group(1) or "image/png").lower(), data


def _parse_size(size: str | None, settings: ServeSettings, param: str = "size") -> int | None:
    if size is None or size == "auto":
        return None
    match = _SIZE_RE.fullmatch(size.strip())
    if match is None or match.group(1) != match.group(2):
        raise ApiError(400, f"size must be 'auto' or a square 'NxN' such as '512x512', got {size!r}", param=param)
    side = int(match.group(1))
    if not 8 <= side <= settings.max_image_size:
        raise ApiError(400, f"size {size!r}: the side must be in [8, {settings.max_image_size}]", param=param)
    return side


def _check_n(n: int | None, settings: ServeSettings) -> int:
    n = 1 if n is None else n
    if n > settings.max_n:
        raise ApiError(400, f"n={n} is more than this server's limit of {settings.max_n} images", param="n")
    return n


def _check_steps(steps: int | None, settings: ServeSettings) -> int | None:
    steps = settings.num_inference_steps if steps is None else steps
    if steps is not None and steps > settings.max_inference_steps:
        raise ApiError(
            400,
            f"num_inference_steps={steps} is more than this server's limit of {settings.max_inference_steps}",
            param="num_inference_steps",
        )
    return steps


def _check_response_format(value: str | None) -> None:
    if value not in (None, "b64_json"):
        raise ApiError(
            400,
            f"response_format {value!r} is not supported: this server answers images as 'b64_json' only",
            param="response_format",
        )


# ---------------------------------------------------------------------------------------------- chat messages


@dataclass
class _ChatInput:
    messages: list[Any]  # LangChain messages
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any] | None
    stop: list[str]
    max_new_tokens: int | None
    temperature: float
    seed: int | None


def _text_of(content: Any, where: str, *, images: bool, settings: ServeSettings, counter: list[int]) -> Any:
    """OpenAI message content -> LangChain content (text, or text and image blocks for user messages)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"{where}: content must be a string or a list of parts", param=where)
    blocks: list[Any] = []
    for index, part in enumerate(content):
        here = f"{where}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url" and images:
            inner = part.get("image_url")
            url = inner.get("url") if isinstance(inner, dict) else inner
            mime, data = _data_url_bytes(url, f"{here}.image_url")
            counter[0] += 1
            if counter[0] > settings.max_images:
                raise ApiError(
                    400, f"more than {settings.max_images} images in one request", param=here, code="too_many_images"
                )
            _check_pixels(data, settings, f"{here}.image_url")
            blocks.append({"type": "image", "base64": base64.b64encode(data).decode("ascii"), "mime_type": mime})
        elif kind == "image_url":
            raise ApiError(400, f"{here}: only user messages may carry images", param=here)
        else:
            raise ApiError(
                400, f"{here}: content part type {kind!r} is not supported; use 'text' or 'image_url'", param=here
            )
    if not images:
        return "\n".join(block["text"] for block in blocks)
    return blocks


def _tool_calls(raw: Any, where: str) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ApiError(400, f"{where}: tool_calls must be a list", param=where)
    calls = []
    for index, call in enumerate(raw):
        here = f"{where}[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ApiError(400, f"{here}: a tool call needs function.name and function.arguments", param=here)
        arguments = function.get("arguments") or "{}"
        try:
            args = json.loads(arguments) if isinstance(arguments, str) else arguments
        except json.JSONDecodeError:
            raise ApiError(400, f"{here}.function.arguments is not valid JSON", param=f"{here}.function") from None
        if not isinstance(args, dict):
            raise ApiError(400, f"{here}.function.arguments must be a JSON object", param=f"{here}.function")
        call_id = call.get("id") if isinstance(call.get("id"), str) else f"call_{uuid.uuid4().hex[:24]}"
        calls.append({"name": function["name"], "args": args, "id": call_id, "type": "tool_call"})
    return calls


def _chat_messages(raw_messages: Sequence[dict[str, Any]], settings: ServeSettings) -> list[Any]:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

    messages: list[Any] = []
    names_by_call: dict[str, str] = {}
    images = [0]
    for index, message in enumerate(raw_messages):
        where = f"messages[{index}]"
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            text = _text_of(content, f"{where}.content", images=False, settings=settings, counter=images)
            messages.append(SystemMessage(content=text))
        elif role == "user":
            blocks = _text_of(content, f"{where}.content", images=True, settings=settings, counter=images)
            messages.append(HumanMessage(content=blocks))
        elif role == "assistant":
            text = _text_of(content, f"{where}.content", images=False, settings=settings, counter=images)
            calls = _tool_calls(message.get("tool_calls"), f"{where}.tool_calls")
            names_by_call.update({call["id"]: call["name"] for call in calls})
            messages.append(AIMessage(content=text, tool_calls=calls))
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                raise ApiError(400, f"{where}: a tool message needs tool_call_id", param=f"{where}.tool_call_id")
            text = _text_of(content, f"{where}.content", images=False, settings=settings, counter=images)
            messages.append(ToolMessage(content=text, tool_call_id=call_id, name=names_by_call.get(call_id)))
        else:
            raise ApiError(
                400,
                f"{where}: role {role!r} is not supported; use system, developer, user, assistant or tool",
                param=f"{where}.role",
            )
    return messages


def _chat_input(request: ChatCompletionRequest, settings: ServeSettings) -> _ChatInput:
    if request.n not in (None, 1):
        raise ApiError(400, "n must be 1: this server returns one choice per request", param="n")
    if request.logprobs:
        raise ApiError(400, "logprobs are not supported by this server", param="logprobs")
    if request.response_format and request.response_format.get("type") not in (None, "text"):
        raise ApiError(400, "response_format: only {'type': 'text'} is supported", param="response_format")
    max_new = request.max_completion_tokens or request.max_tokens
    if max_new is not None and max_new > settings.max_tokens:
        param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        raise ApiError(
            400,
            f"{param}={max_new} is more than this server's limit of {settings.max_tokens} tokens",
            param=param,
            code="max_tokens_too_large",
        )
    tools = [tool.model_dump(exclude_none=True) for tool in request.tools or []]
    for tool in tools:
        tool["function"].setdefault("parameters", {"type": "object", "properties": {}})
    names = [tool["function"]["name"] for tool in tools]
    if len(set(names)) != len(names):
        raise ApiError(400, f"tools: function names must be unique, got {names}", param="tools")
    choice = request.tool_choice
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or name not in names:
            raise ApiError(400, f"tool_choice {choice!r} names no function of 'tools'", param="tool_choice")
        choice = name
    elif choice not in (None, "auto", "none", "required"):
        raise ApiError(400, "tool_choice must be 'auto', 'none', 'required' or a function", param="tool_choice")
    if choice == "required" and not tools:
        raise ApiError(400, "tool_choice 'required' needs tools", param="tool_choice")
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if len(stop) > 4 or any(not s for s in stop):
        raise ApiError(400, "stop: at most 4 non-empty strings", param="stop")
    return _ChatInput(
        messages=_chat_messages(request.messages, settings),
        tools=tools,
        tool_choice=None if choice == "auto" else choice,
        stop=stop,
        max_new_tokens=max_new,
        temperature=request.temperature or 0.0,
        seed=request.seed,
    )


# ---------------------------------------------------------------------------------------------- the service


class SeedXService:
    """The engine, its memory and the blocking work behind each endpoint (called on worker threads)."""

    def __init__(self, engine: Any, memory: Any, settings: ServeSettings) -> None:
        from seedx_agent.graphs.chat_agent import is_small_context

        self.engine = engine
        self.memory = memory
        self.settings = settings
        self.tool_specs = "compact" if is_small_context(engine) else "full"

    # -- chat ----------------------------------------------------------------------------------------------
    def chat_model(self, chat: _ChatInput) -> Any:
        from seedx_agent.tools import ChatSeedX

        model = ChatSeedX(
            engine=self.engine,
            memory=self.memory,
            namespace=self.settings.namespace,
            max_new_tokens=chat.max_new_tokens,
            temperature=chat.temperature,
            seed=chat.seed,
            image_output="off",
            tool_specs=self.tool_specs,
        )
        if chat.tools and chat.tool_choice != "none":
            return model.bind_tools(chat.tools, tool_choice=chat.tool_choice)
        return model

    def max_new_tokens(self, chat: _ChatInput) -> int:
        """The answer's token budget: the request's, else the model's default."""
        return chat.max_new_tokens or self.engine.model.config.max_new_tokens

    def complete(self, chat: _ChatInput) -> tuple[Any, dict[str, int]]:
        reply = self.chat_model(chat).invoke(chat.messages, stop=chat.stop or None)
        return reply, self.usage(reply)

    @staticmethod
    def usage(reply: Any) -> dict[str, int]:
        """OpenAI usage of a reply (or its last stream chunk), from ``ChatSeedX``'s ``usage_metadata``."""
        counted = getattr(reply, "usage_metadata", None) or {}
        prompt, completion = int(counted.get("input_tokens", 0)), int(counted.get("output_tokens", 0))
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    # -- images --------------------------------------------------------------------------------------------
    def generate(self, prompt: str, n: int, size: int | None, seed: int | None, steps: int | None) -> list[str]:
        base = seed if seed is not None else secrets.randbelow(_SEED_LIMIT - 64)
        return [
            _png_b64(self.engine.generate_image(prompt, seed=base + index, num_inference_steps=steps, size=size).image)
            for index in range(n)
        ]

    def edit(
        self, data: bytes, prompt: str, n: int, size: int | None, seed: int | None, steps: int | None
    ) -> list[str]:
        from seedx_agent.pipeline.images import load_image

        source = load_image(data)
        base = seed if seed is not None else secrets.randbelow(_SEED_LIMIT - 64)
        return [
            _png_b64(
                self.engine.edit_image(source, prompt, seed=base + index, num_inference_steps=steps, size=size).image
            )
            for index in range(n)
        ]


# ---------------------------------------------------------------------------------------------- responses


def _openai_tool_calls(calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["args"], ensure_ascii=False)},
        }
        for call in calls
    ]


def _finish_reason(tool_calls: Sequence[Any], usage: Mapping[str, int], max_new_tokens: int) -> str:
    if tool_calls:
        return "tool_calls"
    return "length" if usage["completion_tokens"] >= max_new_tokens else "stop"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content or [] if isinstance(block, dict))


def _sse(payload: Mapping[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


# ---------------------------------------------------------------------------------------------- backends

ChatEvent = tuple[str, Any]
"""One event of a streamed completion: ``("text", delta)``, then ``("done", (calls, usage, max_new_tokens))`` or
``("error", ApiError)``."""


class ModelBackend(Protocol):
    """Where the routes' model work runs: this process (``LocalBackend``) or Ray Serve deployments
    (``serving.ray_serve``); the routes validate, the backend computes, errors are ``ApiError``."""

    async def start(self) -> None:
        """Load what the backend needs (at app start-up)."""

    async def stop(self) -> None:
        """Release it (at app shutdown)."""

    async def ready(self) -> str | None:
        """None when requests can be served now, else what is still missing (``/health`` answers 503 with it)."""

    async def complete(self, chat: _ChatInput) -> tuple[Any, dict[str, int], int]:
        """(reply ``AIMessage``, OpenAI usage, the answer's token budget) of a non-streamed completion."""

    def stream(self, chat: _ChatInput) -> ChatEvents:
        """Start a streamed completion: admission (503) is decided here, before the response starts."""

    async def generate(self, prompt: str, n: int, size: int | None, seed: int | None, steps: int | None) -> list[str]:
        """``n`` generated PNGs (base64), seeds ``seed``, ``seed + 1``, ..."""

    async def edit(
        self, data: bytes, prompt: str, n: int, size: int | None, seed: int | None, steps: int | None
    ) -> list[str]:
        """``n`` edits (PNG base64) of the image ``data``, seeds ``seed``, ``seed + 1``, ..."""


class LocalBackend:
    """The model in this process: ``load()`` returns (engine, memory) once at start-up; model work runs on
    ``settings.workers`` threads with at most ``settings.max_pending`` requests admitted."""

    def __init__(self, settings: ServeSettings, load: Callable[[], tuple[Any, Any]]) -> None:
        self.settings = settings
        self.load = load
        self.workers = _Workers(settings.workers, settings.max_pending)
        self.service: SeedXService | None = None

    async def start(self) -> None:
        """Load the engine and memory on a worker thread (never on the event loop)."""
        engine, memory = await asyncio.get_running_loop().run_in_executor(self.workers.pool, self.load)
        self.service = SeedXService(engine, memory, self.settings)

    async def stop(self) -> None:
        """Stop the worker threads (queued work is cancelled)."""
        self.workers.pool.shutdown(wait=False, cancel_futures=True)

    async def ready(self) -> str | None:
        """Ready once ``start`` has loaded the model (the app only accepts connections after that)."""
        return None if self.service is not None else "the model is loading"

    def _service(self) -> SeedXService:
        assert self.service is not None, "the backend is not started"
        return self.service

    async def complete(self, chat: _ChatInput) -> tuple[Any, dict[str, int], int]:
        """A non-streamed completion on a worker thread."""
        reply, usage = await self.workers.run(self._service().complete, chat)
        return reply, usage, self._service().max_new_tokens(chat)

    def stream(self, chat: _ChatInput) -> ChatEvents:
        """Admit now (503 before any byte is sent); the decode starts on a worker thread, released when it ends."""
        self.workers.admit()
        return _chat_events(self._service(), self.workers, chat)

    async def generate(self, prompt: str, n: int, size: int | None, seed: int | None, steps: int | None) -> list[str]:
        """Generated PNGs on a worker thread."""
        return await self.workers.run(self._service().generate, prompt, n, size, seed, steps)

    async def edit(
        self, data: bytes, prompt: str, n: int, size: int | None, seed: int | None, steps: int | None
    ) -> list[str]:
        """Edited PNGs on a worker thread."""
        return await self.workers.run(self._service().edit, data, prompt, n, size, seed, steps)


# ---------------------------------------------------------------------------------------------- the app


def create_app(
    settings: ServeSettings,
    *,
    load: Callable[[], tuple[Any, Any]] | None = None,
    backend: ModelBackend | None = None,
) -> FastAPI:
    """The FastAPI app. By default the model runs in this process (``LocalBackend``): ``load()`` returns
    (engine, memory) and runs once at start-up in a worker thread (default:
    ``runtime.shared_engine_and_memory(settings.model, settings.memory_dir)``). ``backend`` runs it elsewhere
    instead (``serving.ray_serve``); the routes, validation, limits and error shapes are the same."""

    def default_load() -> tuple[Any, Any]:
        from seedx_agent.graphs.runtime import shared_engine_and_memory

        return shared_engine_and_memory(settings.model, settings.memory_dir, chroma=settings.chroma)

    if backend is not None and load is not None:
        raise ValueError("pass load= (a model in this process) or backend=, not both")
    model_backend: ModelBackend = backend if backend is not None else LocalBackend(settings, load or default_load)
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        started = time.perf_counter()
        await model_backend.start()
        state["created"] = int(time.time())
        logger.info("serving %r (%.1f s to load)", settings.model_id, time.perf_counter() - started)
        try:
            yield
        finally:
            await model_backend.stop()

    app = FastAPI(title="SEED-X OpenAI-compatible API", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        return ApiError(400, f"invalid request: {error.errors()[:1]}").response()

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, error: HTTPException) -> JSONResponse:
        code = "not_found" if error.status_code == 404 else None
        return ApiError(error.status_code, str(error.detail), code=code).response()

    def check_model(name: str | None, required: bool) -> None:
        if name is None and not required:
            return
        if name != settings.model_id:
            raise ApiError(
                404,
                f"the model {name!r} does not exist on this server; it serves {settings.model_id!r}",
                param="model",
                code="model_not_found",
            )

    async def json_body(request: Request, schema: type[BaseModel]) -> Any:
        try:
            payload = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ApiError(400, f"the body is not valid JSON ({error})") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "the body must be a JSON object")
        try:
            return schema.model_validate(payload)
        except ValidationError as error:
            raise _validation_error(error) from None

    # -- plain endpoints -----------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> JSONResponse:
        """Readiness: 200 once every part of the backend can serve, 503 (with what is missing) before."""
        missing = await model_backend.ready()
        if missing is not None:
            return JSONResponse({"status": "starting", "model": settings.model_id, "detail": missing}, status_code=503)
        return JSONResponse({"status": "ok", "model": settings.model_id})

    def model_card() -> dict[str, Any]:
        return {"id": settings.model_id, "object": "model", "created": state["created"], "owned_by": "seedx-agent"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        check_model(model_id, required=True)
        return model_card()

    # -- chat ----------------------------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body: ChatCompletionRequest = await json_body(request, ChatCompletionRequest)
        check_model(body.model, required=True)
        chat = _chat_input(body, settings)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            events = model_backend.stream(chat)  # admitted here: a 503 comes before the stream starts
            return StreamingResponse(
                _stream_chat(events, completion_id, created, settings.model_id, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        reply, usage, max_new_tokens = await model_backend.complete(chat)
        calls = _openai_tool_calls(reply.tool_calls)
        message: dict[str, Any] = {"role": "assistant", "content": _text(reply.content)}
        if calls:
            message["tool_calls"] = calls
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": settings.model_id,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": _finish_reason(calls, usage, max_new_tokens),
                    "logprobs": None,
                }
            ],
            "usage": usage,
        }

    # -- images --------------------------------------------------------------------------------------------
    @app.post("/v1/images/generations")
    async def generations(request: Request) -> dict[str, Any]:
        body: ImageGenerationRequest = await json_body(request, ImageGenerationRequest)
        check_model(body.model, required=False)
        _check_response_format(body.response_format)
        n = _check_n(body.n, settings)
        size = _parse_size(body.size, settings)
        steps = _check_steps(body.num_inference_steps, settings)
        images = await model_backend.generate(body.prompt, n, size, body.seed, steps)
        return _images_response(images)

    @app.post("/v1/images/edits")
    async def edits(request: Request) -> dict[str, Any]:
        try:
            form = await request.form(max_files=4, max_fields=64)
        except Exception as error:  # malformed multipart
            raise ApiError(400, f"the body is not a valid multipart form ({error})") from None
        try:
            files = [value for key, value in form.multi_items() if key in ("image", "image[]")]
            if not files or isinstance(files[0], str):
                raise ApiError(400, "send the picture to edit as the multipart file 'image'", param="image")
            if len(files) > 1:
                raise ApiError(400, "this server edits one image per request", param="image")
            if form.get("mask") is not None:
                raise ApiError(400, "mask is not supported: describe the change in the prompt", param="mask")
            prompt = form.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise ApiError(400, "prompt is required: the edit instruction", param="prompt")
            check_model(_form_text(form, "model"), required=False)
            _check_response_format(_form_text(form, "response_format"))
            n = _check_n(_form_int(form, "n"), settings)
            size = _parse_size(_form_text(form, "size"), settings)
            seed = _form_int(form, "seed", upper=_SEED_LIMIT - 1)
            steps = _check_steps(_form_int(form, "num_inference_steps", lower=1), settings)
            data = await files[0].read()
        finally:
            await form.close()
        _check_pixels(data, settings, "image")
        images = await model_backend.edit(data, prompt, n, size, seed, steps)
        return _images_response(images)

    app.add_middleware(_Guard, settings=settings)  # the key and the body limit, before any route reads
    return app


def _images_response(images: Sequence[str]) -> dict[str, Any]:
    return {
        "created": int(time.time()),
        "data": [{"b64_json": image} for image in images],
        "output_format": "png",
    }


def _form_text(form: Any, name: str) -> str | None:
    value = form.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a text field", param=name)
    return value


def _form_int(form: Any, name: str, *, lower: int = 0, upper: int | None = None) -> int | None:
    text = _form_text(form, name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, got {text!r}", param=name) from None
    if value < lower or (upper is not None and value > upper):
        raise ApiError(400, f"{name}={value} is out of range", param=name)
    return value


class ChatEvents:
    """The events of one streamed completion, produced in the background (a worker thread, or a task relaying a
    Ray replica) from the moment it is created; ``aclose()`` (the client went) asks the producer to stop."""

    def __init__(self, queue: asyncio.Queue[ChatEvent], stop: Callable[[], Any]) -> None:
        self._queue = queue
        self._stop = stop
        self._finished = False

    def __aiter__(self) -> ChatEvents:
        return self

    async def __anext__(self) -> ChatEvent:
        if self._finished:
            raise StopAsyncIteration
        event = await self._queue.get()
        self._finished = event[0] != "text"
        return event

    async def aclose(self) -> None:
        """Stop the producer unless the completion already ended."""
        if not self._finished:
            self._finished = True
            self._stop()


def _chat_events(service: SeedXService, workers: _Workers, chat: _ChatInput) -> ChatEvents:
    """Start one streamed completion now: the decode runs on a worker thread (admitted by the caller, released
    when the thread ends, even if nobody reads) and stops at its next token once the events are closed."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[ChatEvent] = asyncio.Queue()
    stop = threading.Event()

    def put(kind: str, value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone (server shutting down)
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

    def produce() -> None:
        chunks = None
        try:
            chunks = service.chat_model(chat).stream(chat.messages, stop=chat.stop or None)
            last = None
            for chunk in chunks:
                if stop.is_set():
                    return
                if chunk.tool_call_chunks or chunk.response_metadata or chunk.usage_metadata:
                    last = chunk
                text = _text(chunk.content)
                if text:
                    put("text", text)
            calls = []
            for index, call in enumerate(last.tool_call_chunks if last is not None else []):
                try:
                    args = json.loads(call.get("args") or "{}")
                except json.JSONDecodeError:
                    continue  # an unparseable call (invalid_tool_calls): not a tool call for OpenAI clients
                if isinstance(args, dict):
                    calls.append({"index": index, "id": call["id"], "name": call["name"], "args": args})
            put("done", (calls, service.usage(last), service.max_new_tokens(chat)))
        except BaseException as error:
            put("error", error if isinstance(error, ApiError) else _from_library(error))
        finally:
            if chunks is not None:
                with contextlib.suppress(Exception):
                    chunks.close()  # stops ChatSeedX's decode loop at its next token
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(workers.release)

    try:
        loop.run_in_executor(workers.pool, produce)
    except RuntimeError:  # the pool is shut down
        workers.release()
        raise
    return ChatEvents(events, stop.set)


async def _stream_chat(
    events: ChatEvents,
    completion_id: str,
    created: int,
    model_id: str,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """SSE chunks of one streamed completion from its events; closing it (the client went) closes ``events``."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }
        )

    try:
        yield chunk({"role": "assistant", "content": ""})
        async for kind, value in events:
            if kind == "text":
                yield chunk({"content": value})
            elif kind == "error":
                error = value if isinstance(value, ApiError) else _from_library(value)
                yield _sse(error.body())
                return
            else:
                calls, usage, max_new_tokens = value
                if calls:
                    tool_calls = [{"index": i, **call} for i, call in enumerate(_openai_tool_calls(calls))]
                    yield chunk({"tool_calls": tool_calls})
                yield chunk({}, _finish_reason(calls, usage, max_new_tokens))
                if include_usage:
                    yield _sse(
                        {
                            "id": completion_id,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model_id,
                            "choices": [],
                            "usage": usage,
                        }
                    )
                yield _sse("[DONE]")
                return
    finally:
        await events.aclose()
