"""``seedx-agent serve`` (the OpenAI-compatible API) under a real uvicorn, driven by the official ``openai`` client.

One server for the module: ``tiny-random``, an API key, and small limits so that oversized input is cheap to
send. It runs as a subprocess on a free loopback port and is always stopped again.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from serving_helpers import free_port, log_tail, running, server_env

openai = pytest.importorskip("openai", reason="needs the openai client (the dev extra)")
pytest.importorskip("fastapi", reason="needs FastAPI and uvicorn (the serve extra)")
pytest.importorskip("uvicorn", reason="needs FastAPI and uvicorn (the serve extra)")
httpx = pytest.importorskip("httpx")

KEY = "sk-seedx-test"
MODEL = "tiny-random"
MAX_BODY = 400_000
MAX_PIXELS = 250_000  # 500x500
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "the weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("openai_api")
    port = free_port()
    command = [sys.executable, "-m", "seedx_agent", "serve", "--model", MODEL, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--memory", str(folder / "memory"), "--api-key", KEY]
    command += ["--max-body-bytes", str(MAX_BODY), "--max-image-pixels", str(MAX_PIXELS), "--max-tokens", "64"]
    command += ["--num-inference-steps", "2", "--workers", "2"]
    log = folder / "server.log"
    url = f"http://127.0.0.1:{port}"
    with running(command, env=server_env(), cwd=folder, log=log, ready_url=f"{url}/health"):
        yield url
    assert "Traceback" not in log.read_text(errors="replace"), log_tail(log)


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


def png(width: int, height: int, colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` (a few bytes of pixel data): only its header can be read."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 49)  # one short row: the rest is missing
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def decoded(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image


# ---------------------------------------------------------------------------------------------- the happy paths


def test_health_and_models(server: str, client: openai.OpenAI) -> None:
    assert httpx.get(f"{server}/health").json() == {"status": "ok", "model": MODEL}  # no key needed
    assert [model.id for model in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).owned_by == "seedx-agent"


def test_chat_plain_is_greedy_and_counts_tokens(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "hello"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
    again = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
    choice = first.choices[0]
    assert first.object == "chat.completion" and first.model == MODEL and first.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length") and not choice.message.tool_calls
    assert choice.message.content == again.choices[0].message.content  # temperature defaults to 0: greedy
    usage = first.usage
    assert usage.prompt_tokens > 0 and 1 <= usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_reads_a_data_url_image(client: openai.OpenAI) -> None:
    text_only = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "what is this?"}], max_tokens=4
    )
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": data_url(png(64, 48))}},
    ]
    with_image = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=4
    )
    assert with_image.choices[0].message.role == "assistant"
    assert with_image.usage.prompt_tokens > text_only.usage.prompt_tokens  # the image tokens are counted


def test_chat_stream_matches_the_plain_answer(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "tell me a story"}]
    plain = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12)
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text == plain.choices[0].message.content
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == plain.usage.total_tokens


def test_tool_calls_in_the_openai_format(client: openai.OpenAI) -> None:
    question = {"role": "user", "content": "what is the weather in Paris?"}
    choice = {"type": "function", "function": {"name": "get_weather"}}
    reply = client.chat.completions.create(
        model=MODEL, messages=[question], tools=[WEATHER], tool_choice=choice, max_tokens=64
    )
    answer = reply.choices[0]
    assert answer.finish_reason == "tool_calls"
    call = answer.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert isinstance(json.loads(call.function.arguments)["city"], str)

    streamed = list(
        client.chat.completions.create(
            model=MODEL, messages=[question], tools=[WEATHER], tool_choice=choice, max_tokens=64, stream=True
        )
    )
    calls = [tc for c in streamed if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert [(tc.function.name, tc.function.arguments) for tc in calls] == [("get_weather", call.function.arguments)]
    assert streamed[-1].choices[0].finish_reason == "tool_calls"

    # the call and its result read back: the conversation goes on
    history = [question, answer.message.model_dump(exclude_none=True)]
    history.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"})
    follow_up = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], max_tokens=8)
    assert follow_up.choices[0].message.role == "assistant"


def test_images_generate_and_edit(client: openai.OpenAI) -> None:
    made = client.images.generate(
        model=MODEL,
        prompt="a red circle",
        n=2,
        size="64x64",
        response_format="b64_json",
        extra_body={"seed": 3, "num_inference_steps": 2},
    )
    pictures = [decoded(item.b64_json) for item in made.data]
    assert [p.size for p in pictures] == [(64, 64), (64, 64)]
    same = client.images.generate(model=MODEL, prompt="a red circle", size="64x64", extra_body={"seed": 3})
    assert decoded(same.data[0].b64_json).tobytes() == pictures[0].tobytes()  # seeded: reproducible

    edited = client.images.edit(
        model=MODEL,
        image=("circle.png", base64.b64decode(made.data[0].b64_json), "image/png"),
        prompt="make the circle blue",
        size="64x64",
        response_format="b64_json",
        extra_body={"seed": 1},
    )
    assert [decoded(item.b64_json).size for item in edited.data] == [(64, 64)]


# ---------------------------------------------------------------------------------------------- refusals


def test_api_key_is_required(server: str) -> None:
    for key in ("wrong-key", None):
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        answer = httpx.get(f"{server}/v1/models", headers=headers)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
    anonymous = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        anonymous.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"


def test_oversized_body_is_413(client: openai.OpenAI) -> None:
    big = data_url(bytes(MAX_BODY))  # its base64 alone is larger than the limit
    content = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": big}}]
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
    assert caught.value.status_code == 413
    assert caught.value.body["code"] == "request_too_large"


@pytest.mark.parametrize("size", [(600, 600), (20000, 20000)])
def test_too_many_pixels_is_400(client: openai.OpenAI, size: tuple[int, int]) -> None:
    image = png(*size) if size[0] < 1000 else png_header(*size)
    content = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": data_url(image)}}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
    assert caught.value.body["code"] == "image_too_large"
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(image=("big.png", image, "image/png"), prompt="make it blue")
    assert caught.value.body["code"] == "image_too_large"


def test_bad_requests_are_4xx_in_the_openai_shape(server: str, client: openai.OpenAI) -> None:
    hello = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-9", messages=hello)
    assert caught.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=hello, max_tokens=10_000)
    assert caught.value.body["code"] == "max_tokens_too_large"
    bad_tools = [
        {"type": "function", "function": {"name": "has spaces"}},
        {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}},
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": []}}},
        {"type": "retrieval"},
    ]
    for tool in bad_tools:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=MODEL, messages=hello, tools=[tool])
        assert caught.value.body["param"].startswith("tools[0]"), caught.value.body
    with pytest.raises(openai.BadRequestError):  # never downloaded
        content = [{"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model=MODEL, prompt="x", size="64x32")
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model=MODEL, prompt="x", response_format="url")
    answer = httpx.post(
        f"{server}/v1/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert answer.status_code == 400 and set(answer.json()["error"]) == {"message", "type", "param", "code"}


def test_a_client_leaving_mid_stream_does_not_hurt_the_server(server: str, client: openai.OpenAI) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "a long story"}], "max_tokens": 64}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json={**body, "stream": True}, headers=headers) as r:
        assert r.status_code == 200
        first = next(r.iter_lines())
        assert first.startswith("data: ")
    # the server keeps serving (and answers the same request whole)
    reply = client.chat.completions.create(model=MODEL, messages=body["messages"], max_tokens=4)
    assert reply.choices[0].message.role == "assistant"
    assert [model.id for model in client.models.list()] == [MODEL]


def test_the_cli_checks_arguments_before_loading(tmp_path: Path) -> None:
    from seedx_agent.cli import main

    assert main(["serve", "--model", str(tmp_path / "missing"), "--memory", str(tmp_path / "m")]) == 2


def test_requests_beyond_max_pending_get_503() -> None:
    from seedx_agent.serving.openai_api import ApiError, _Workers

    workers = _Workers(workers=1, max_pending=2)
    try:
        workers.admit()
        workers.admit()
        with pytest.raises(ApiError) as caught:
            workers.admit()
        assert caught.value.status == 503 and caught.value.body()["error"]["code"] == "server_overloaded"
        workers.release()
        workers.admit()  # room again
    finally:
        workers.pool.shutdown()
