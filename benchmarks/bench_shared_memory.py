"""Benchmark: what the shared mode of ``ImageMemory`` costs against the single-process mode, on one chroma server.

Shared mode (``ImageMemory.open(root, client=ChromaServer(...), shared=True)``, module ``memory.shared``) lets
several processes use one memory: every write takes a cross-process ``flock`` and namespace-filtered searches go
through chroma's metadata filter, because this process's namespace index and vector cache cannot see the other
processes' writes. This script measures both effects on the same store and server, in one run:

1. per call, alternating the two modes on the same root: ``add`` of one picture, ``search_text`` and
   ``search_image`` unfiltered and filtered by a namespace holding 1 % of the records;
2. throughput of concurrent writers: one shared process adding 2N pictures against two shared processes adding N
   each at the same time (the write lock serialises their critical sections; the embedder and PNG encoding run
   outside it).

It starts its own ``chroma run`` server on a free loopback port (the chroma CLI installed next to this Python).
Run from the repository root: ``python -m benchmarks.bench_shared_memory --count 5000``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.bench_memory import WORDS, PrecomputedEmbedder, percentiles, time_calls
from memory import ChromaServer, ImageMemory

BIG, SMALL = "user:bench/thread:main", "user:bench/thread:side"


@contextmanager
def chroma_server(folder: Path) -> Iterator[ChromaServer]:
    """A ``chroma run`` server on a free loopback port, stopped on exit."""
    executable = shutil.which("chroma", path=str(Path(sys.executable).parent))
    if executable is None:
        raise SystemExit("the chroma CLI is not installed next to this Python (pip install chromadb)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [executable, "run", "--path", str(folder), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "ANONYMIZED_TELEMETRY": "False", "HOME": str(folder)},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the chroma server did not start within 30 s") from None
                time.sleep(0.1)
        yield ChromaServer(host="127.0.0.1", port=port, collection_prefix="bench")
    finally:
        server.terminate()
        server.wait(timeout=30)


def pictures(rng: np.random.Generator, count: int) -> list[Image.Image]:
    """``count`` distinct 8x8 pictures."""
    return [Image.fromarray(p) for p in rng.integers(0, 256, (count, 8, 8, 3), dtype=np.uint8)]


def open_memory(root: Path, server: ChromaServer, *, shared: bool, seed: int = 0) -> ImageMemory:
    """The memory at ``root`` on ``server``, in shared or single-process mode."""
    return ImageMemory.open(root, image_embedder=PrecomputedEmbedder(seed=seed), client=server, shared=shared)


def fill(root: Path, server: ChromaServer, count: int) -> tuple[list[str], list[str]]:
    """Store ``count`` records, 1 % of them in the small namespace; returns the ids (big, small)."""
    rng = np.random.default_rng(1)
    small = max(10, count // 100)
    ids: dict[str, list[str]] = {BIG: [], SMALL: []}
    with open_memory(root, server, shared=False) as memory:
        for namespace, total in ((BIG, count - small), (SMALL, small)):
            for first in range(0, total, 1000):
                size = min(1000, total - first)
                records = memory.add_many(
                    pictures(rng, size),
                    kind="input",
                    namespace=namespace,
                    captions=[" ".join(rng.choice(WORDS, 4)) for _ in range(size)],
                    batch_size=size,
                    progress=False,
                )
                ids[namespace].extend(record.id for record in records)
    return ids[BIG], ids[SMALL]


def per_call(root: Path, server: ChromaServer, small_ids: list[str], runs: int, rounds: int) -> dict[str, Any]:
    """p50/p95 per operation and mode, the modes alternating ``rounds`` times on the same root."""
    rng = np.random.default_rng(2)
    samples: dict[tuple[str, str], list[float]] = {}
    for round_index in range(rounds):
        for mode in ("single", "shared"):
            with open_memory(root, server, shared=mode == "shared", seed=100 + round_index) as memory:
                new = pictures(rng, runs + 3)
                operations: dict[str, Callable[[int], object]] = {
                    "add (1 picture)": lambda i, m=memory, n=new: m.add(
                        n[i], kind="generated", namespace=SMALL, prompt=" ".join(WORDS[i % 12 : i % 12 + 3])
                    ),
                    "search_text, unfiltered": lambda i, m=memory: m.search_text(
                        " ".join(WORDS[i % 12 : i % 12 + 2]), k=5
                    ),
                    "search_text, 1 % namespace": lambda i, m=memory: m.search_text(
                        " ".join(WORDS[i % 12 : i % 12 + 2]), k=5, namespace=SMALL
                    ),
                    "search_image by id, 1 % namespace": lambda i, m=memory: m.search_image(
                        small_ids[(i * 7919) % len(small_ids)], k=5, namespace=SMALL
                    ),
                }
                for name, operation in operations.items():
                    samples.setdefault((name, mode), []).extend(time_calls(operation, runs))
    table: dict[str, Any] = {}
    for (name, mode), times in samples.items():
        p50, p95 = percentiles(times)
        table.setdefault(name, {})[mode] = {"p50_ms": p50, "p95_ms": p95, "n": len(times)}
    return table


def _writer(root: str, server: dict[str, Any], count: int, seed: int, start: Any, out: Any) -> None:
    """One shared-mode process: open, say "ready", add ``count`` pictures once ``start`` is set; sends its seconds."""
    rng = np.random.default_rng(seed)
    batch = pictures(rng, count)
    with open_memory(Path(root), ChromaServer(**server), shared=True, seed=seed) as memory:
        out.send("ready")
        start.wait()
        began = time.perf_counter()
        for index, picture in enumerate(batch):
            memory.add(picture, kind="generated", namespace=f"writers/{seed}", prompt=f"writer {seed} {index}")
        out.send(time.perf_counter() - began)


def throughput(root: Path, server: ChromaServer, adds: int) -> dict[str, float]:
    """Adds per second: one shared process adding 2 x ``adds``, then two adding ``adds`` each at once."""
    context = multiprocessing.get_context("spawn")
    results: dict[str, float] = {}
    for label, writers in (("1 process", [2 * adds]), ("2 processes", [adds, adds])):
        pipes, processes = [], []
        start = context.Event()  # set once every writer has opened the memory (imports and repair done)
        for number, count in enumerate(writers):
            receive, send = context.Pipe(duplex=False)
            process = context.Process(
                target=_writer,
                args=(str(root), server.model_dump(), count, 1000 + number + 10 * len(writers), start, send),
            )
            process.start()
            pipes.append(receive)
            processes.append(process)
        if any(pipe.recv() != "ready" for pipe in pipes):
            raise SystemExit("a writer process did not open the memory")
        start.set()
        seconds = [pipe.recv() for pipe in pipes]
        for process in processes:
            process.join(timeout=60)
            if process.exitcode != 0:
                raise SystemExit(f"a writer process failed (exit code {process.exitcode})")
        results[label] = sum(writers) / max(seconds)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, run both sections, print the tables and ratios; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="records stored before timing")
    parser.add_argument("--runs", type=int, default=40, help="timed calls per operation, mode and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two modes")
    parser.add_argument("--adds", type=int, default=100, help="pictures per writer in the throughput section")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    parser.add_argument("--smoke", action="store_true", help="200 records, 5 runs, 1 round, 10 adds (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.count, args.runs, args.rounds, args.adds = 200, 5, 1, 10
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="seedx-bench-shared-") as folder:
        with chroma_server(Path(folder) / "server") as server:
            root = Path(folder) / "root"
            started = time.perf_counter()
            _, small_ids = fill(root, server, args.count)
            print(f"stored {args.count} records on a chroma server in {time.perf_counter() - started:.1f} s")
            table = per_call(root, server, small_ids, args.runs, args.rounds)
            rates = throughput(root, server, args.adds)
    load_after = os.getloadavg()
    print(f"\n## shared vs single-process mode, {args.count} records on one chroma server (loopback HTTP)")
    print(f"{args.rounds} alternating rounds x {args.runs} calls per operation and mode; CPUs {os.cpu_count()}")
    print("| operation | single p50 ms | shared p50 ms | single p95 | shared p95 | shared / single (p50) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, modes in table.items():
        single, shared = modes["single"], modes["shared"]
        ratio = shared["p50_ms"] / single["p50_ms"]
        print(
            f"| {name} | {single['p50_ms']:.2f} | {shared['p50_ms']:.2f} | {single['p95_ms']:.2f} | "
            f"{shared['p95_ms']:.2f} | {ratio:.2f}x |"
        )
    print(f"\n## concurrent writers, shared mode ({args.adds} adds per writer of 2; 1 writer does {2 * args.adds})")
    for label, rate in rates.items():
        print(f"{label}: {rate:.1f} adds/s")
    print(f"2 processes / 1 process: {rates['2 processes'] / rates['1 process']:.2f}x")
    print(
        "load average before "
        + ", ".join(f"{value:.2f}" for value in load_before)
        + "; after "
        + ", ".join(f"{value:.2f}" for value in load_after)
    )
    if args.out is not None:
        args.out.write_text(
            json.dumps({"count": args.count, "per_call": table, "adds_per_s": rates, "cpus": os.cpu_count()}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
