"""Benchmark: data-parallel training on CPU processes against one process using the same cores.

Baseline: one process with all ``--cores`` threads and the global batch. Ours: ``torchrun`` with one
process per core, one thread each and an equal share of the batch (same global batch, same updates up to
float rounding; ``tests/training/test_loop_distributed.py`` checks that equivalence). Workload: the
stage-1 de-tokenizer step of the ``mini`` preset (random weights: only time is measured), through
``training.loop.run_loop``. Prints samples per second of both and the ratio.

Run from the repository root: ``python -m benchmarks.bench_data_parallel [--cores 2 --batch 16 --steps 8]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch


def _worker(args: argparse.Namespace) -> None:
    from seedx_agent.config import SeedXConfig
    from seedx_agent.miniature.world_data import WorldData
    from seedx_agent.pipeline.components import build_components
    from seedx_agent.pipeline.tokenizer import SeedXTokenizer
    from seedx_agent.training.loop import LoopConfig, distributed_context, run_loop
    from seedx_agent.training.recipes import _detok_step

    torch.set_num_threads(args.threads)
    ctx = distributed_context()
    config = SeedXConfig.from_preset(args.preset)
    tokenizer = SeedXTokenizer.tiny()
    parts = build_components(config, tokenizer=tokenizer, variants=("seed-x-i",), stages=(1,), seed=0)
    detok, data = parts.detokenizers[1], WorldData(config, tokenizer)
    per_process = args.batch // ctx.world_size
    inner = _detok_step(detok, parts.vision, lambda step: data.scenes(step, per_process), uncond_prob=0.1)
    calls: list[float] = []

    def step_fn(index: int) -> dict[str, torch.Tensor]:
        calls.append(time.perf_counter())
        return inner(index)

    loop = LoopConfig(steps=args.steps, lr=1e-4, warmup_steps=0, checkpoint_every_s=1e9, log_every=10**6)
    with tempfile.TemporaryDirectory() as out:
        run_loop("bench", out, {"detokenizer": detok}, list(detok.parameters()), step_fn, loop, progress=False)
        end = time.perf_counter()
    if ctx.is_main:  # the first step (allocation, thread start-up) is not timed
        print(f"RESULT {args.batch * (args.steps - 1) / (end - calls[1]):.3f}", flush=True)


def _launch(args: argparse.Namespace, processes: int) -> float:
    threads = max(1, args.cores // processes)
    worker = [
        "-m", "benchmarks.bench_data_parallel", "--worker", "--threads", str(threads), "--preset", args.preset,
        "--batch", str(args.batch), "--steps", str(args.steps),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    prefix = [sys.executable]
    if processes > 1:
        prefix += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    done = subprocess.run([*prefix, *worker], env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"worker failed ({processes} processes):\n{done.stderr[-3000:]}")
    return float(next(line for line in done.stdout.splitlines() if line.startswith("RESULT")).split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="global batch (split over the processes)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--smoke", action="store_true", help="tiny-random, 3 steps of batch 4 (CI)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.preset, args.batch, args.steps = "tiny-random", 4, 3
    if args.worker:
        _worker(args)
        return
    if args.cores < 2 or args.batch % args.cores or args.steps < 2:
        raise SystemExit("need --cores >= 2, a --batch divisible by --cores and --steps >= 2")
    baseline = _launch(args, 1)
    ours = _launch(args, args.cores)
    label = f"{args.preset} stage-1 de-tokenizer step, global batch {args.batch}, {args.cores} cores"
    print(f"{label}: 1 process x {args.cores} threads {baseline:.2f} samples/s")
    print(f"{label}: {args.cores} processes x 1 thread {ours:.2f} samples/s")
    print(f"ratio ours/baseline (throughput): {ours / baseline:.2f}")


if __name__ == "__main__":
    main()
