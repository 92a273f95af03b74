"""Benchmark: N concurrent ``generate_image`` calls on one ``SeedXEngine``, micro-batched against serialised.

Both engines wrap the same model; N threads start together (barrier) with distinct prompts and seeds.
The serial engine (``batch_window_s=0``) runs the N requests one after another under its device lock; the
batching engine runs the LLM per prompt and the stage-1 de-tokenizer once per batch. Reported per model:
median wall time of the N requests over ``--repeats``, the ratio serial/batched, de-tokenizer calls per
round, and the largest pixel difference between batched and serial images (uint8 levels).

Run from the repository root: ``python -m benchmarks.bench_engine_batching --model tiny-random mini``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np
import torch

from seedx_agent.engine import SeedXEngine
from seedx_agent.errors import CheckpointError
from seedx_agent.model import GeneratedImage, SeedX

PROMPTS = (
    "a red square on the left",
    "two blue circles",
    "a green triangle above a yellow square",
    "a purple circle in the middle",
    "an orange square and a red triangle",
    "three small blue squares",
    "a yellow circle at the bottom",
    "a green square on the right",
)


def concurrent_round(engine: SeedXEngine, count: int, steps: int) -> tuple[float, list[GeneratedImage]]:
    """``count`` threads call ``engine.generate_image`` at once; returns wall seconds and results in order."""
    results: list[GeneratedImage | None] = [None] * count
    errors: list[BaseException] = []
    barrier = threading.Barrier(count + 1)

    def worker(index: int) -> None:
        barrier.wait()
        try:
            prompt = PROMPTS[index % len(PROMPTS)]
            results[index] = engine.generate_image(prompt, seed=index, num_inference_steps=steps)
        except BaseException as error:  # reported below, after every thread finished
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return seconds, [r for r in results if r is not None]


def bench(model: SeedX, count: int, steps: int, repeats: int, window: float) -> dict[str, float]:
    """Median wall time of ``count`` concurrent requests, serial vs batched, plus batching statistics."""
    serial_engine = SeedXEngine(model)
    batched_engine = SeedXEngine(model, batch_window_s=window, max_batch=count)
    concurrent_round(serial_engine, 1, steps)  # warm-up (allocator, scheduler construction)
    serial_times, batched_times, max_diff = [], [], 0
    for _ in range(repeats):
        seconds, serial = concurrent_round(serial_engine, count, steps)
        serial_times.append(seconds)
        seconds, batched = concurrent_round(batched_engine, count, steps)
        batched_times.append(seconds)
        for a, b in zip(serial, batched, strict=True):
            diff = np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16)).max()
            max_diff = max(max_diff, int(diff))
    return {
        "serial_s": statistics.median(serial_times),
        "batched_s": statistics.median(batched_times),
        "detokenizer_calls": batched_engine.batches_run / repeats,
        "max_diff": float(max_diff),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, run every model and print one line per model; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["tiny-random", "mini"], help="'mini', presets or folders")
    parser.add_argument("--requests", type=int, default=6, help="concurrent generate_image calls per round")
    parser.add_argument("--steps", type=int, default=10, help="de-tokenizer sampling steps")
    parser.add_argument("--repeats", type=int, default=5, help="rounds per engine (median reported)")
    parser.add_argument("--window", type=float, default=0.005, help="batching window in seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--smoke", action="store_true", help="tiny-random, 3 requests, 1 step, 1 round (CI)")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.repeats < 1 or args.steps < 1:
        parser.error("--requests, --repeats and --steps must be at least 1")
    logging.basicConfig(level=logging.WARNING)
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    specs, count, steps, repeats = args.model, args.requests, args.steps, args.repeats
    if args.smoke:
        specs, count, steps, repeats = ["tiny-random"], 3, 1, 1
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}")
    for spec in specs:
        try:
            model = SeedX.from_pretrained(spec, variants=("seed-x-i",))
        except CheckpointError as error:
            print(f"model {spec}: skipped ({error})")
            continue
        row = bench(model, count, steps, repeats, args.window)
        print(
            f"model {spec}: {count} concurrent generate_image, {steps} steps, median of {repeats}: "
            f"serial {row['serial_s']:.2f} s, batched {row['batched_s']:.2f} s, "
            f"ratio serial/batched: {row['serial_s'] / row['batched_s']:.2f}; "
            f"de-tokenizer calls per round {row['detokenizer_calls']:.1f} (of {count}); "
            f"max pixel diff batched vs serial {row['max_diff']:.0f}/255"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
