"""Benchmark: image-memory recall with many stored images, and LangGraph's overhead per tool call.

Section 1 fills an ``ImageMemory`` with ``--count`` records through its bulk path ``add_many``: tiny
distinct 8x8 images, captions from a small vocabulary, and an image embedder that hands out precomputed
random unit vectors (512-d, like the ViT features the tools layer stores), so filling measures storage,
not a model; 1 % of them go to a second, small namespace. Then it times ``search_image`` (by stored id) and
``search_text`` unfiltered and filtered by namespace (what the ``recall_images`` tool does), through chroma's
metadata filter (before) and the namespace index with its vector cache (after), in the same run, with the cost of
the first query of a namespace (which fills the cache) and the cache's size; and shows the relevance floor.
Section 2 times a one-node graph (``START -> ToolNode -> END``) running one call of a trivial tool against
calling that tool directly (``tool.invoke``): LangGraph's cost per ``invoke``. Section 3 times an agent
loop (planner -> ToolNode -> planner, ten calls per ``invoke``) against the same planner and calls in plain
Python: LangGraph's marginal cost per tool call once a turn is running.

Run from the repository root: ``python -m benchmarks.bench_memory --count 100000`` (``--sections memory`` runs
section 1 alone).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from memory import DEFAULT_MIN_TEXT_SCORE, ImageMemory

logger = logging.getLogger("benchmarks.bench_memory")

WORDS = ("red", "green", "blue", "yellow", "circle", "square", "triangle", "star", "small", "large", "left", "right")
EMBED_DIM = 512


class PrecomputedEmbedder:
    """An image embedder returning the next rows of a seeded random unit-vector stream (one per image)."""

    def __init__(self, dim: int = EMBED_DIM, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.dim = dim

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        vectors = self.rng.standard_normal((len(images), self.dim)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def percentiles(samples: Sequence[float]) -> tuple[float, float]:
    """(p50, p95) in milliseconds."""
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1e3


def time_calls(func: Callable[[int], object], runs: int) -> list[float]:
    """Seconds per call of ``func(i)``, after 3 untimed warm-ups."""
    for index in range(3):
        func(index)
    times = []
    for index in range(runs):
        start = time.perf_counter()
        func(index)
        times.append(time.perf_counter() - start)
    return times


MAIN_NAMESPACE = "user:bench/thread:main"
SIDE_NAMESPACE = "user:bench/thread:side"
PREFIX = "user:bench"  # what a per-user recall filters on: every record lies below it


def bench_memory(count: int, runs: int, batch_size: int) -> float:
    """Section 1: fill ``count`` records, then p50 of search_image / search_text, unfiltered and filtered by
    namespace as the ``recall_images`` tool queries them, through chroma's metadata filter ("before", the
    reference path ``namespace_fast_path=False``) and the namespace index ("after"); plus the first query of the
    small namespace (a vector-cache fill), the cache's size and the relevance floor.
    Returns the worst filtered p50 of the "after" path, ms."""
    rng = np.random.default_rng(1)
    side = max(10, count // 100)  # a small namespace: 1 % of the records
    with tempfile.TemporaryDirectory(prefix="seedx-bench-memory-") as root:
        memory = ImageMemory.open(root, image_embedder=PrecomputedEmbedder())
        try:
            start = time.perf_counter()
            ids: list[str] = []
            side_ids: list[str] = []
            for namespace, total, stored in ((MAIN_NAMESPACE, count - side, ids), (SIDE_NAMESPACE, side, side_ids)):
                for first in range(0, total, batch_size):
                    size = min(batch_size, total - first)
                    pixels = rng.integers(0, 256, (size, 8, 8, 3), dtype=np.uint8)  # distinct with near certainty
                    captions = [" ".join(rng.choice(WORDS, 4)) for _ in range(size)]
                    records = memory.add_many(
                        [Image.fromarray(p) for p in pixels],
                        kind="input",
                        namespace=namespace,
                        captions=captions,
                        batch_size=batch_size,
                        progress=False,
                    )
                    stored.extend(record.id for record in records)
            fill = time.perf_counter() - start
            print(
                f"memory: {memory.count()} records stored in {fill:.1f} s ({count / fill:.0f} records/s): "
                f"{len(ids)} in {MAIN_NAMESPACE}, {len(side_ids)} in {SIDE_NAMESPACE}"
            )

            def image_query(namespace: str | None) -> Callable[[int], object]:
                pool = side_ids if namespace == SIDE_NAMESPACE else ids
                return lambda i: memory.search_image(pool[(i * 7919) % len(pool)], k=5, namespace=namespace)

            def text_query(namespace: str | None) -> Callable[[int], object]:
                return lambda i: memory.search_text(" ".join(WORDS[i % 12 : i % 12 + 2]), k=5, namespace=namespace)

            # The first query of a namespace reads its vectors from chroma into the vector cache (once per
            # collection and namespace); the timed runs below all hit the cache.
            cold: dict[str, float] = {}
            memory.vector_cache.clear()
            for kind, query in (("search_image (by id)", image_query), ("search_text", text_query)):
                start = time.perf_counter()
                query(SIDE_NAMESPACE)(0)
                cold[kind] = time.perf_counter() - start
            cached = memory.vector_cache.keys()
            cache_bytes = memory.vector_cache.nbytes
            rows: list[tuple[str, str, str, list[float]]] = []
            for kind, query in (("search_image (by id)", image_query), ("search_text", text_query)):
                rows.append((kind, "none", "-", time_calls(query(None), runs)))
                for namespace, share in ((PREFIX, "100 %"), (SIDE_NAMESPACE, "1 %")):
                    for path, fast in (("before: chroma where", False), ("after: namespace index", True)):
                        memory.namespace_fast_path = fast
                        rows.append((kind, f"{namespace} ({share})", path, time_calls(query(namespace), runs)))
                memory.namespace_fast_path = True
            # The relevance floor: a query sharing nothing with any caption.
            nonsense = "../../etc/passwd"
            unfloored = memory.search_text(nonsense, k=5, namespace=PREFIX, min_score=-1)
            floored = memory.search_text(nonsense, k=5, namespace=PREFIX)
            floor_times = time_calls(lambda i: memory.search_text(nonsense, k=5, namespace=PREFIX), runs)
        finally:
            memory.close()
    print(f"\n## memory recall with {count} stored images ({runs} queries each, k=5)")
    print("| query | namespace filter | path | p50 ms | p95 ms | p50 / unfiltered p50 |")
    print("|---|---|---|---:|---:|---:|")
    p50s: dict[tuple[str, str, str], float] = {}
    for kind, namespace, path, times in rows:
        p50, p95 = percentiles(times)
        p50s[kind, namespace, path] = p50
        ratio = p50 / p50s[kind, "none", "-"]
        print(f"| {kind} | {namespace} | {path} | {p50:.2f} | {p95:.2f} | {ratio:.2f}x |")
    worst = 0.0
    for kind in ("search_image (by id)", "search_text"):
        unfiltered = p50s[kind, "none", "-"]
        for namespace in (f"{PREFIX} (100 %)", f"{SIDE_NAMESPACE} (1 %)"):
            before = p50s[kind, namespace, "before: chroma where"]
            after = p50s[kind, namespace, "after: namespace index"]
            worst = max(worst, after)
            print(
                f"{kind}, filtered by {namespace}: p50 {before:.2f} -> {after:.2f} ms "
                f"({before / after:.1f}x faster); filtered/unfiltered {before / unfiltered:.1f}x -> "
                f"{after / unfiltered:.1f}x (unfiltered p50 {unfiltered:.2f} ms)"
            )
    for kind, seconds in cold.items():
        print(f"{kind}, first query of {SIDE_NAMESPACE} (fills the vector cache): {seconds * 1e3:.1f} ms")
    print(
        f"vector cache after those first queries: {cache_bytes / 2**20:.2f} MiB for {', '.join(map(str, cached))} "
        f"(budget {memory.vector_cache.max_bytes / 2**20:.0f} MiB)"
    )
    floor_p50, _ = percentiles(floor_times)
    scores = ", ".join(f"{hit.score:.3f}" for hit in unfloored)
    kept = ", ".join(f"{hit.score:.3f}" for hit in floored)
    print(
        f"relevance floor: {nonsense!r} in {PREFIX}: without a floor {len(unfloored)} hits (scores {scores}); with "
        f"min_text_score={DEFAULT_MIN_TEXT_SCORE} {len(floored)} hits (scores {kept or '-'}), p50 {floor_p50:.2f} ms"
        + ("; those share a hash bucket with a caption word (HashingTextEmbeddings, 256-d)" if floored else "")
    )
    print(f"filtered memory recall p50 (worst filtered row, namespace index): {worst:.2f} ms (target <= 10)")
    return worst


def _add_numbers_tool() -> Any:
    """The trivial tool both LangGraph sections call, so only LangGraph's own cost differs between paths."""
    from langchain_core.tools import tool

    @tool
    def add_numbers(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    return add_numbers


def _node_classes() -> dict[str, Any]:
    """LangGraph's ``ToolNode`` (the baseline) and ``InlineToolNode`` (what ``create_chat_agent`` uses)."""
    from langgraph.prebuilt import ToolNode
    from seedx_agent.graphs.tool_node import InlineToolNode

    return {"ToolNode": ToolNode, "InlineToolNode": InlineToolNode}


def bench_tool_node(runs: int) -> float:
    """Section 2: one trivial tool call through a one-node graph (``ToolNode``, and ``InlineToolNode`` as our
    graphs use it) vs the tool itself; returns InlineToolNode's overhead in ms."""
    from langchain_core.messages import AIMessage
    from langgraph.graph import END, START, MessagesState, StateGraph

    add_numbers = _add_numbers_tool()
    nodes = {}
    for name, node_class in _node_classes().items():
        # A tool node needs a graph's runtime config: the smallest graph, START -> tools -> END.
        builder = StateGraph(MessagesState)
        builder.add_node("tools", node_class([add_numbers]))
        builder.add_edge(START, "tools")
        builder.add_edge("tools", END)
        nodes[name] = builder.compile()

    def through(name: str) -> Callable[[int], object]:
        def call_node(index: int) -> object:
            call = {"name": "add_numbers", "args": {"a": index, "b": 1}, "id": f"call_{index}", "type": "tool_call"}
            out = nodes[name].invoke({"messages": [AIMessage(content="", tool_calls=[call])]})
            if out["messages"][-1].content != str(index + 1):
                raise RuntimeError(f"{name} returned {out['messages'][-1].content!r}")
            return out

        return call_node

    direct_p50, direct_p95 = percentiles(time_calls(lambda i: add_numbers.invoke({"a": i, "b": 1}), runs))
    print(f"\n## LangGraph tool-node overhead per tool call ({runs} calls each)")
    print("| path | p50 ms | p95 ms | overhead ms (p50 - direct p50) |")
    print("|---|---:|---:|---:|")
    print(f"| tool.invoke (direct) | {direct_p50:.3f} | {direct_p95:.3f} | |")
    overheads = {}
    for name in nodes:
        p50, p95 = percentiles(time_calls(through(name), runs))
        overheads[name] = p50 - direct_p50
        print(f"| graph START -> {name} -> END, one tool call | {p50:.3f} | {p95:.3f} | {overheads[name]:.3f} |")
    print(
        f"overhead per tool call: InlineToolNode {overheads['InlineToolNode']:.3f} ms (target <= 2 ms), "
        f"ToolNode {overheads['ToolNode']:.3f} ms"
    )
    return overheads["InlineToolNode"]


def bench_agent_loop(runs: int, calls_per_turn: int = 10) -> float:
    """Section 3: the marginal cost of one tool call inside a running agent loop (planner node -> tool node ->
    planner, ``calls_per_turn`` times per invoke) against the same planner and tool calls run as plain Python;
    returns InlineToolNode's overhead per tool call in ms (section 2's per-invoke setup is paid once per turn)."""
    from langchain_core.messages import AIMessage
    from langgraph.graph import END, START, MessagesState, StateGraph

    add_numbers = _add_numbers_tool()

    def plan(messages: list) -> AIMessage:
        """A scripted planner: one tool call per step until ``calls_per_turn`` results are in, then answer."""
        done = sum(1 for m in messages if m.type == "tool")
        if done >= calls_per_turn:
            return AIMessage(content=f"done after {done} calls")
        call = {"name": "add_numbers", "args": {"a": done, "b": 1}, "id": f"call_{done}", "type": "tool_call"}
        return AIMessage(content="", tool_calls=[call])

    def make_graph(node_class: Any) -> Any:
        builder = StateGraph(MessagesState)
        builder.add_node("planner", lambda state: {"messages": [plan(state["messages"])]})
        builder.add_node("tools", node_class([add_numbers]))
        builder.add_edge(START, "planner")
        builder.add_conditional_edges("planner", lambda state: "tools" if state["messages"][-1].tool_calls else END)
        builder.add_edge("tools", "planner")
        return builder.compile()

    def through(graph: Any) -> Callable[[int], object]:
        def run_turn(index: int) -> object:
            out = graph.invoke({"messages": [("user", "go")]}, {"recursion_limit": 4 * calls_per_turn + 4})
            if len([m for m in out["messages"] if m.type == "tool"]) != calls_per_turn:
                raise RuntimeError("the agent loop did not make every tool call")
            return out

        return run_turn

    def plain(index: int) -> object:
        messages: list = []
        while (message := plan(messages)).tool_calls:
            messages.append(message)
            for call in message.tool_calls:
                messages.append(add_numbers.invoke(call))  # a ToolMessage, as a tool node returns
        return messages

    turns = max(10, runs // calls_per_turn)
    plain_p50, _ = percentiles(time_calls(plain, turns))
    print(f"\n## LangGraph overhead per tool call inside an agent loop ({calls_per_turn} calls per invoke)")
    print("| path | p50 ms per turn | overhead per tool call ms |")
    print("|---|---:|---:|")
    print(f"| plain Python: planner + tool.invoke, {calls_per_turn} calls | {plain_p50:.3f} | |")
    overheads = {}
    for name, node_class in _node_classes().items():
        graph_p50, _ = percentiles(time_calls(through(make_graph(node_class)), turns))
        overheads[name] = (graph_p50 - plain_p50) / calls_per_turn
        path = f"graph planner -> {name} -> planner, {calls_per_turn} calls"
        print(f"| {path} | {graph_p50:.3f} | {overheads[name]:.3f} |")
    print(
        f"overhead per tool call in the loop: InlineToolNode {overheads['InlineToolNode']:.3f} ms (target <= 2 ms), "
        f"ToolNode {overheads['ToolNode']:.3f} ms"
    )
    return overheads["InlineToolNode"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags and run both sections; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="records to store")
    parser.add_argument("--runs", type=int, default=200, help="timed queries / tool calls per path")
    parser.add_argument("--batch-size", type=int, default=2000, help="records per add_many call")
    parser.add_argument("--smoke", action="store_true", help="100 records, 10 runs (CI)")
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=("memory", "tool-node", "agent-loop"),
        default=("memory", "tool-node", "agent-loop"),
        help="which sections to run (default: all three)",
    )
    args = parser.parse_args(argv)
    if args.count < 10 or args.runs < 1 or args.batch_size < 1:
        parser.error("--count must be >= 10, --runs and --batch-size >= 1")
    logging.basicConfig(level=logging.WARNING)
    count, runs = (100, 10) if args.smoke else (args.count, args.runs)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"load average {load}")
    if "memory" in args.sections:
        bench_memory(count, runs, min(args.batch_size, count))
    if "tool-node" in args.sections:
        bench_tool_node(runs)
    if "agent-loop" in args.sections:
        bench_agent_loop(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
