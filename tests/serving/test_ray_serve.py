"""The OpenAI-compatible API on Ray Serve (``seedx_agent.serving.ray_serve``): a local Ray instance (2 CPUs),
``tiny-random``, 2 replicas of the LLM+ViT deployment and 1 of the de-tokenizer, driven by the ``openai`` client
from concurrent threads; every answer is compared with the single-process API's (in this process).

Images rendered in one de-tokenizer batch with other requests may differ by 1/255 in a few pixels from the
single-process ones (batched UNet rounding, documented in ``ray_serve``); an image rendered alone is exact. Both
sides run torch with one thread: CPU fp32 results depend on the thread count.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from chroma_helpers import running_chroma
from PIL import Image
from serving_helpers import free_port

ray = pytest.importorskip("ray", reason="needs Ray Serve: pip install 'seedx-agent[ray]'")
serve = pytest.importorskip("ray.serve", reason="needs Ray Serve: pip install 'seedx-agent[ray]'")
openai = pytest.importorskip("openai", reason="needs the openai client (the dev extra)")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402
from seedx_agent.serving.openai_api import create_app  # noqa: E402
from seedx_agent.serving.ray_serve import APP_NAME, RayOptions, app_builder, build_app  # noqa: E402
from seedx_agent.serving.settings import ServeSettings  # noqa: E402

KEY = "sk-seedx-ray"
THREADS = 1  # torch threads of the replicas and of the single-process reference
MODEL = "tiny-random"
CONFIG = Path(__file__).resolve().parents[2] / "serving" / "ray_config.yaml"
CHATS = [("describe a red circle", 1), ("what is in the picture?", 2), ("hello", 3), ("draw a cat", 4)]
PROMPTS = [("a red circle", 11), ("a blue square", 12), ("a green tree", 13), ("a cat", 14)]


def settings_for(folder: Path) -> ServeSettings:
    return ServeSettings(
        model=MODEL, memory_dir=str(folder), api_key=KEY, max_tokens=64, num_inference_steps=2, workers=2
    )


@pytest.fixture(scope="module")
def reference_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The single-process API (``seedx-agent serve``'s app) in this process."""
    app = create_app(settings_for(tmp_path_factory.mktemp("reference") / "memory"))
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)  # CPU results depend on the thread count: the replicas run with THREADS
    try:
        with TestClient(app) as http:
            yield http
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(reference_http: TestClient) -> openai.OpenAI:
    """The same client as for Ray, on the single-process API."""
    return openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=reference_http, max_retries=0)


@pytest.fixture(scope="module")
def ray_memory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    """The memory folder the Ray replicas share, and the chroma server holding its records."""
    folder = tmp_path_factory.mktemp("ray")
    with running_chroma(folder / "chroma") as server:
        yield folder / "memory", server


@pytest.fixture(scope="module")
def ray_url(ray_memory: tuple[Path, Any]) -> Iterator[str]:
    """The API on a local Ray instance: 2 LLM+ViT replicas sharing one memory (shared mode on a chroma server),
    1 de-tokenizer replica (half a CPU each)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    folder, server = ray_memory
    settings = replace(settings_for(folder), chroma=f"{server.host}:{server.port}/{server.collection_prefix}")
    options = RayOptions(
        llm_replicas=2,
        llm_actor_options={"num_cpus": 0.5},
        detok_actor_options={"num_cpus": 0.5},
        batch_wait_timeout_s=0.5,  # long enough for concurrent requests to meet in one batch on a busy machine
        torch_threads=THREADS,
    )
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(settings, options), name=APP_NAME, route_prefix="/", blocking=False)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def client(ray_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{ray_url}/v1", api_key=KEY, max_retries=0, timeout=120)


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def assert_same_picture(got: str, want: str, *, exact: bool) -> None:
    """Equal pixels; or, for a picture that may have been rendered in a batch, at most 1/255 apart in <= 2 %."""
    a, b = pixels(got), pixels(want)
    assert a.shape == b.shape
    difference = np.abs(a - b)
    if exact:
        assert difference.max() == 0, f"{int((difference > 0).sum())} values differ"
    else:
        assert difference.max() <= 1 and (difference > 0).mean() <= 0.02, (difference.max(), (difference > 0).mean())


def chat(client: openai.OpenAI, text: str, seed: int, stream: bool = False) -> tuple[str, Any, str]:
    """(text, usage, finish_reason) of a greedy completion."""
    kwargs: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 12}
    if not stream:
        answer = client.chat.completions.create(seed=seed, **kwargs)
        usage = answer.usage.model_dump(exclude_none=True)
        return answer.choices[0].message.content, usage, answer.choices[0].finish_reason
    chunks = list(
        client.chat.completions.create(seed=seed, stream=True, stream_options={"include_usage": True}, **kwargs)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
    return text, chunks[-1].usage.model_dump(exclude_none=True), finish


def generate(client: openai.OpenAI, prompt: str, seed: int, n: int = 1) -> list[str]:
    answer = client.images.generate(model=MODEL, prompt=prompt, n=n, extra_body={"seed": seed})
    return [image.b64_json for image in answer.data]


def png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def edit(client: openai.OpenAI, colour: str, seed: int) -> str:
    answer = client.images.edit(
        model=MODEL, image=("in.png", png(colour), "image/png"), prompt="make it blue", extra_body={"seed": seed}
    )
    return answer.data[0].b64_json


@pytest.mark.slow  # Ray's start and four processes loading the model: about a minute on 2 CPU cores
def test_concurrent_answers_equal_the_single_process_ones(client: openai.OpenAI, reference: openai.OpenAI) -> None:
    jobs: list[tuple[str, Any]] = [("chat", (text, seed)) for text, seed in CHATS]
    jobs += [("stream", (text, seed)) for text, seed in CHATS[:2]]
    jobs += [("generate", (prompt, seed)) for prompt, seed in PROMPTS]
    jobs += [("generate2", PROMPTS[0]), ("edit", ("red", 21))]

    def run(target: openai.OpenAI, job: tuple[str, Any]) -> Any:
        kind, args = job
        if kind == "chat":
            return chat(target, *args)
        if kind == "stream":
            return chat(target, *args, stream=True)
        if kind == "generate":
            return generate(target, *args)
        if kind == "generate2":
            return generate(target, *args, n=2)
        return [edit(target, *args)]

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        answers = list(pool.map(lambda job: run(client, job), jobs))
    expected = [run(reference, job) for job in jobs]
    for job, got, want in zip(jobs, answers, expected, strict=True):
        if job[0] in ("chat", "stream"):
            assert got == want, job
            continue
        assert len(got) == len(want), job
        for got_image, want_image in zip(got, want, strict=True):
            assert_same_picture(got_image, want_image, exact=False)
    stream_text, _, _ = answers[len(CHATS)]
    assert stream_text == answers[0][0]  # streamed and plain answers agree, as in one process

    detokenizer = serve.get_deployment_handle("SeedXDetokenizer", app_name=APP_NAME)
    stats = detokenizer.stats.remote().result(timeout_s=30)
    assert max(stats["requests_per_batch"]) >= 2, stats  # the de-tokenizer batched across requests


@pytest.mark.slow
def test_an_image_rendered_alone_is_exact(client: openai.OpenAI, reference: openai.OpenAI) -> None:
    assert_same_picture(generate(client, "a yellow sun", 31)[0], generate(reference, "a yellow sun", 31)[0], exact=True)
    assert_same_picture(edit(client, "green", 32), edit(reference, "green", 32), exact=True)


@pytest.mark.slow
def test_errors_and_limits_are_the_single_process_ones(ray_url: str, reference_http: TestClient) -> None:
    local = reference_http
    auth = {"Authorization": f"Bearer {KEY}"}
    chat_body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    cases: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
        ("post", "/v1/chat/completions", chat_body, {}),  # no key: 401
        ("post", "/v1/chat/completions", {**chat_body, "model": "other"}, auth),  # 404 model_not_found
        ("post", "/v1/chat/completions", {**chat_body, "max_tokens": 65}, auth),  # over the limit: 400
        ("post", "/v1/images/generations", {"prompt": "x", "size": "7x7"}, auth),
        # the model's own error, raised on an LLM replica: the prompt exceeds the context
        ("post", "/v1/chat/completions", {**chat_body, "messages": [{"role": "user", "content": "cat " * 2100}]}, auth),
        ("get", "/v1/models", {}, auth),
    ]
    with httpx.Client(base_url=ray_url, timeout=120) as remote:
        for method, path, body, headers in cases:
            kwargs: dict[str, Any] = {"headers": headers} | ({"json": body} if method == "post" else {})
            got = getattr(remote, method)(path, **kwargs)
            want = getattr(local, method)(path, **kwargs)
            assert got.status_code == want.status_code, (path, got.text)
            if path == "/v1/models":
                assert [m["id"] for m in got.json()["data"]] == [m["id"] for m in want.json()["data"]] == [MODEL]
            else:
                assert got.json() == want.json(), path
        assert remote.get("/health").json() == {"status": "ok", "model": MODEL}


@pytest.mark.slow
def test_a_client_leaving_mid_stream_does_not_hurt_the_server(ray_url: str, client: openai.OpenAI) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "a long story"}], "max_tokens": 64, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    for _ in range(3):
        with httpx.stream("POST", f"{ray_url}/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # the first chunk, then hang up
    assert chat(client, "hello", 3) == chat(client, "hello", 3)  # still serving


# ---------------------------------------------------------------------------------------------- no Ray instance


def test_the_replicas_share_one_memory_folder(ray_url: str, ray_memory: tuple[Path, Any]) -> None:
    from seedx_agent.memory.shared import FlockFile

    folder, _ = ray_memory
    alive = sorted((folder / "journals").glob("*.alive"))
    assert len(alive) == 2  # one registration per LLM replica, both in the one folder
    assert not any(folder.parent.glob("memory-llm*"))  # no per-replica folders
    for path in alive:  # both replicas are live: their registration locks are held
        assert not FlockFile(path).try_lock(exclusive=True)


def test_the_config_file_builds_the_application(monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    (application,) = config.applications
    assert application.import_path == "seedx_agent.serving.ray_serve:app_builder"
    monkeypatch.setenv("SEEDX_API_KEY", "sk-from-env")
    app = app_builder(dict(application.args))
    deployments = {d.name: d for d in application.deployments}
    assert set(deployments) == {"SeedXIngress", "SeedXLLM", "SeedXDetokenizer"}
    assert deployments["SeedXLLM"].ray_actor_options.num_gpus == 1
    ingress = app._bound_deployment  # Ray keeps the bound ingress here (no public accessor)
    settings = ingress.init_args[0]
    assert settings.api_key == "sk-from-env" and settings.served_model_name == "seed-x"
    assert {arg._bound_deployment.name for arg in ingress.init_args[1:]} == {"SeedXLLM", "SeedXDetokenizer"}
    with pytest.raises(Exception, match="unknown args"):
        app_builder({"model": "mini", "num_replicas": 2})


def test_resources_that_do_not_fit_a_local_instance_are_refused() -> None:
    from seedx_agent.serving.ray_serve import check_resources

    from seedx_agent.errors import ConfigError

    two_cpus = {"CPU": 2.0, "memory": 1e10}
    with pytest.raises(
        ConfigError, match=r"ask for 3 CPUs \(2 LLM x 1 \+ 1 de-tokenizer x 1\) but this Ray instance has 2"
    ):
        check_resources(RayOptions(llm_replicas=2), two_cpus)
    half = {"num_cpus": 0.5}
    check_resources(RayOptions(llm_replicas=2, llm_actor_options=half, detok_actor_options=half), two_cpus)
    gpus = {"num_cpus": 0.5, "num_gpus": 1}
    with pytest.raises(ConfigError, match=r"ask for 2 GPUs .* has 0.*--llm-gpus"):
        check_resources(RayOptions(llm_replicas=2, llm_actor_options=gpus, detok_actor_options=half), two_cpus)


class _Handle:
    """A deployment handle whose ``ping`` answers at once or never (a replica not scheduled yet)."""

    def __init__(self, running: bool) -> None:
        self.running = running
        self.ping = self

    def remote(self) -> Any:
        async def answer() -> bool:
            if not self.running:
                await asyncio.sleep(3600)
            return True

        return answer()


def test_health_is_503_until_every_deployment_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    from seedx_agent.serving import ray_serve

    monkeypatch.setattr(ray_serve, "READY_TIMEOUT_S", 0.05)
    settings = ServeSettings(model=MODEL)
    starting = ray_serve.RayBackend(settings, _Handle(running=True), _Handle(running=False))
    with TestClient(create_app(settings, backend=starting)) as http:
        answer = http.get("/health")
        assert answer.status_code == 503
        assert answer.json() == {
            "status": "starting",
            "model": MODEL,
            "detail": "no running replica of SeedXDetokenizer yet",
        }
    running = ray_serve.RayBackend(settings, _Handle(running=True), _Handle(running=True))
    with TestClient(create_app(settings, backend=running)) as http:
        assert http.get("/health").json() == {"status": "ok", "model": MODEL}


def test_options_are_checked_before_ray_starts() -> None:
    from seedx_agent.errors import ConfigError

    settings = ServeSettings(model=MODEL)
    with pytest.raises(ConfigError, match="max_batch_size=2 is smaller than max_n=4"):
        build_app(settings, RayOptions(max_batch_size=2))
    with pytest.raises(ConfigError, match="llm_replicas must be an integer >= 1"):
        build_app(settings, replace(RayOptions(), llm_replicas=0))


def test_the_cli_flags(tmp_path: Path) -> None:
    from seedx_agent.memory import InvalidMemoryRequestError

    from seedx_agent.cli.serve import ray_options_from_args, register, settings_from_args
    from seedx_agent.errors import ConfigError

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    common = ["serve", "--model", MODEL, "--memory", str(tmp_path / "memory")]
    args = parser.parse_args([*common, "--ray", "--llm-replicas", "2", "--llm-gpus", "1", "--detok-gpus", "0.5"])
    settings_from_args(args)
    options = ray_options_from_args(args)
    assert (options.llm_replicas, options.detok_replicas) == (2, 1)
    assert options.llm_actor_options == {"num_cpus": 1, "num_gpus": 1.0}
    assert options.detok_actor_options == {"num_cpus": 1, "num_gpus": 0.5}
    options = ray_options_from_args(parser.parse_args([*common, "--ray", "--replica-cpus", "0.5", "--threads", "2"]))
    assert options.llm_actor_options == options.detok_actor_options == {"num_cpus": 0.5}
    assert options.torch_threads == 2
    with pytest.raises(ConfigError, match="--replica-cpus only apply with --ray"):
        settings_from_args(parser.parse_args([*common, "--replica-cpus", "0.5"]))
    with pytest.raises(ConfigError, match="--llm-replicas only apply with --ray"):
        settings_from_args(parser.parse_args([*common, "--llm-replicas", "2"]))
    assert settings_from_args(parser.parse_args([*common, "--chroma", "10.0.0.5:8001/seedx"])).chroma == (
        "10.0.0.5:8001/seedx"
    )
    with pytest.raises(InvalidMemoryRequestError, match="is not HOST:PORT"):
        settings_from_args(parser.parse_args([*common, "--chroma", "10.0.0.5"]))
