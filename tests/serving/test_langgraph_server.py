"""``langgraph dev`` (langgraph-cli, in-memory runtime) really serves the shipped ``langgraph.json``.

The server runs as a subprocess on a free loopback port, started from a scratch folder with a copy of the
shipped config (so the graphs import as installed modules, not files next to it), with the blocking-call guard
on (no ``--allow-blocking``). ``langgraph-sdk`` drives it: list assistants, one chat run, one 2-beat story run,
and while that run is in flight a ``get_state`` of the chat thread and the story's ``/schemas`` (each builds its
graph again, which used to reopen the image memory and fail with ``MemoryLockedError``). The model loads once.

The model is ``mini`` (the bundled miniature): the chat graph's planner sends its full tool specs to models
with more than 1024 positions, and on ``tiny-random`` (2048 positions) that prompt does not fit.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from serving_helpers import free_port, log_tail, running, server_env

pytest.importorskip("langgraph_api", reason="needs langgraph-cli[inmem] (the dev extra)")
langgraph_sdk = pytest.importorskip("langgraph_sdk", reason="needs langgraph-sdk (the dev extra)")

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_names_importable_zero_argument_factories() -> None:
    import importlib
    import inspect

    config = json.loads((ROOT / "langgraph.json").read_text())
    assert set(config["graphs"]) == {"chat", "story", "slides", "refine"}
    for spec in config["graphs"].values():
        module_name, _, attr = spec.partition(":")
        assert not module_name.startswith(".") and not module_name.endswith(".py"), spec
        factory = getattr(importlib.import_module(module_name), attr)
        assert inspect.iscoroutinefunction(factory) and not inspect.signature(factory).parameters, spec


async def _drive(url: str) -> dict:
    client = langgraph_sdk.get_client(url=url)
    assistants = await client.assistants.search()
    by_graph = {assistant["graph_id"]: assistant["assistant_id"] for assistant in assistants}
    assert set(by_graph) == {"chat", "story", "slides", "refine"}

    chat_thread = (await client.threads.create())["thread_id"]
    chat = await client.runs.wait(
        chat_thread, by_graph["chat"], input={"messages": [{"role": "user", "content": "draw a red circle"}]}
    )
    assert "__error__" not in chat, chat
    assert chat["messages"][0]["content"] == "draw a red circle"
    assert chat["messages"][-1]["type"] == "ai"

    story_thread = (await client.threads.create())["thread_id"]
    seen: dict = {"events": []}
    async for part in client.runs.stream(
        story_thread,
        by_graph["story"],
        input={"premise": "a red circle in a garden", "steps": 2},
        stream_mode=["custom"],
    ):
        if part.event == "metadata":
            seen["run_id"] = part.data["run_id"]
        elif part.event == "custom":
            seen["events"].append(part.data.get("event"))
            if "during" not in seen:  # the run is in flight: it just reported progress and has beats left
                state = await client.threads.get_state(chat_thread)
                schemas = await client.assistants.get_schemas(by_graph["story"])
                graph = await client.assistants.get_graph(by_graph["chat"])
                run = await client.runs.get(story_thread, seen["run_id"])
                seen["during"] = (len(state["values"]["messages"]), schemas["graph_id"], bool(graph["nodes"]))
                seen["status_during"] = run["status"]
        elif part.event == "error":
            raise AssertionError(f"story run failed: {part.data}")
    final = await client.threads.get_state(story_thread)
    run = await client.runs.get(story_thread, seen["run_id"])
    return {"seen": seen, "story": final["values"], "status": run["status"], "chat_messages": len(chat["messages"])}


def test_langgraph_dev_serves_the_graphs(tmp_path: Path) -> None:
    config = json.loads((ROOT / "langgraph.json").read_text())
    (tmp_path / "langgraph.json").write_text(json.dumps(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = server_env(
        SEEDX_MODEL="mini",
        SEEDX_MEMORY_DIR=str(tmp_path / "memory"),
        SEEDX_STORY_OUT=str(tmp_path / "story"),
        SEEDX_SLIDES_OUT=str(tmp_path / "slides"),
    )
    command = [sys.executable, "-m", "langgraph_cli", "dev", "--no-browser", "--no-reload"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--config", str(tmp_path / "langgraph.json")]
    log = tmp_path / "server.log"
    with running(command, env=env, cwd=tmp_path, log=log, ready_url=f"{url}/ok"):
        result = asyncio.run(_drive(url))
    text = log.read_text(errors="replace")
    seen = result["seen"]
    assert result["status"] == "success", log_tail(log)
    assert seen["status_during"] == "running"  # get_state and /schemas really overlapped the run
    assert seen["during"] == (result["chat_messages"], "story", True)
    assert seen["events"][0] == "story_start"
    story = result["story"]
    assert story["step"] == 2 and len(story["recent"]) == 2 and Path(story["storyboard"]).is_file()
    assert text.count("loading the shared engine") == 1, log_tail(log)  # once per process, not per request
    for failure in ("MemoryLockedError", "BlockingError", "Blocking call"):
        assert failure not in text, log_tail(log)
