"""``runtime.shared_engine_and_memory``: one engine per model spec and one memory per folder for the whole
process, however many threads ask at once (the servers' graph factories and request handlers rely on it)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

runtime = pytest.importorskip("seedx_agent.graphs.runtime")
from seedx_agent.errors import ConfigError  # noqa: E402


class FakeMemory:
    def __init__(self, root: Path, engine: object) -> None:
        self.root, self.engine, self.closed = root, engine, False


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Fresh caches, and loaders that are slow (to widen any race) and count their calls."""
    calls: dict[str, list] = {"engines": [], "memories": []}
    monkeypatch.setattr(runtime, "_SHARED_ENGINES", {})
    monkeypatch.setattr(runtime, "_SHARED_MEMORIES", {})

    def load_engine(spec: str) -> object:
        time.sleep(0.05)
        calls["engines"].append(spec)
        return object()

    def open_memory(root: Path, engine: object, *, chroma: object = None) -> FakeMemory:
        time.sleep(0.05)
        calls["memories"].append(root)
        calls.setdefault("chroma", []).append(chroma)
        return FakeMemory(root, engine)

    monkeypatch.setattr(runtime, "load_engine", load_engine)
    monkeypatch.setattr(runtime, "open_memory", open_memory)
    return calls


def test_concurrent_callers_share_one_engine_and_memory(loads: dict[str, list], tmp_path: Path) -> None:
    start = threading.Barrier(8)

    def ask(_: int) -> tuple[object, object]:
        start.wait()
        return runtime.shared_engine_and_memory("tiny-random", tmp_path / "memory")

    with ThreadPoolExecutor(8) as pool:
        pairs = list(pool.map(ask, range(8)))
    assert len({id(engine) for engine, _ in pairs}) == 1 and len({id(memory) for _, memory in pairs}) == 1
    assert loads["engines"] == ["tiny-random"] and len(loads["memories"]) == 1
    # the same folder spelled differently is the same memory
    again = runtime.shared_engine_and_memory("tiny-random", str(tmp_path / "memory" / ".." / "memory"))
    assert again == pairs[0] and len(loads["memories"]) == 1


def test_from_env_and_one_folder_per_model(
    loads: dict[str, list], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEEDX_MODEL", "tiny-random")
    monkeypatch.setenv("SEEDX_MEMORY_DIR", str(tmp_path / "memory"))
    engine, memory = runtime.shared_engine_and_memory_from_env()
    assert runtime.shared_engine_and_memory_from_env() == (engine, memory)
    assert runtime.shared_engine("tiny-random") is engine
    with pytest.raises(ConfigError, match="another model"):
        runtime.shared_engine_and_memory("mini", tmp_path / "memory")
    other_engine, other_memory = runtime.shared_engine_and_memory("mini", tmp_path / "other")
    assert other_engine is not engine and other_memory is not memory
    memory.closed = True  # closed by a user: the next caller gets it reopened
    _, reopened = runtime.shared_engine_and_memory_from_env()
    assert reopened is not memory and not reopened.closed
    assert loads["engines"] == ["tiny-random", "mini"]


def test_langgraph_entry_points_build_graphs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The factories ``langgraph.json`` names are coroutines that build their graph in a worker thread."""
    import asyncio

    from seedx_agent.graphs import chat_agent, langgraph_server

    seen: list[str] = []

    def build() -> str:
        seen.append(threading.current_thread().name)
        return "graph"

    monkeypatch.setattr(chat_agent, "make_chat_graph", build)

    async def main() -> str:
        return await langgraph_server.make_chat_graph()

    assert asyncio.run(main()) == "graph"
    assert seen and seen[0] != threading.main_thread().name


def test_a_chroma_server_reaches_the_memory_opener(loads: dict[str, list], tmp_path: Path) -> None:
    runtime.shared_engine_and_memory("mini", tmp_path / "m", chroma="127.0.0.1:8001")
    assert loads["chroma"] == ["127.0.0.1:8001"]
