"""Benchmark: de-tokenizer schedulers, Euler with 50 steps against DPM-Solver++ with 10-25 UNet evaluations.

Each setting reconstructs the same held-out miniature-world scenes (``SeedX.reconstruct``: ViT features ->
stage-1 de-tokenizer, fixed seeds) and scores them with ``seedx_agent.miniature.evaluate.score_reconstruction``
(every object's kind and colour read back by pixel analysis). Reported per setting: mean ``all_ok``,
``shape_ok``, ``colour_ok`` and wall time per image. The target: a DPM setting with <= 25 UNet
evaluations reaching Euler-50's ``all_ok``. Meaningful on a trained model (``--model mini``); on
``tiny-random`` it only checks that the pipeline runs.

Run from the repository root: ``python -m benchmarks.bench_detokenizer --model mini --scenes 50``.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence

import torch

from seedx_agent.miniature import world
from seedx_agent.miniature.evaluate import score_reconstruction
from seedx_agent.model import SeedX

logger = logging.getLogger("benchmarks.bench_detokenizer")

SETTINGS = (("euler", 50), ("dpm", 10), ("dpm", 15), ("dpm", 20), ("dpm", 25))


def held_out_scenes(count: int, image_size: int) -> list[tuple[world.Scene, object]]:
    """``count`` (scene, rendered image) pairs drawn from the world's held-out seed range."""
    split = world.SPLITS["heldout"]
    pairs = []
    for index in range(count):
        scene = world.random_scene(random.Random(split.sample_seed(index)))
        pairs.append((scene, world.render(scene, image_size)))
    return pairs


def bench(model: SeedX, scenes: int, settings: Sequence[tuple[str, int]], image_size: int) -> list[dict]:
    """Reconstruct and score every scene under every setting; returns one row per setting."""
    pairs = held_out_scenes(scenes, image_size)
    rows = []
    for scheduler, steps in settings:
        scores: dict[str, list[float]] = {"all_ok": [], "shape_ok": [], "colour_ok": []}
        start = time.perf_counter()
        for index, (scene, image) in enumerate(pairs):
            out = model.reconstruct(image, seed=index, num_inference_steps=steps, scheduler=scheduler)
            for key, value in score_reconstruction(out, scene).items():
                scores[key].append(float(value))
        seconds = (time.perf_counter() - start) / len(pairs)
        rows.append({"setting": f"{scheduler}-{steps}", **{k: statistics.mean(v) for k, v in scores.items()}})
        rows[-1]["seconds_per_image"] = seconds
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, run every setting and print the table; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini", help="'mini', a preset such as 'tiny-random', or a folder")
    parser.add_argument("--scenes", type=int, default=50, help="held-out scenes per setting")
    parser.add_argument("--image-size", type=int, default=64, help="rendered scene size in pixels")
    parser.add_argument("--smoke", action="store_true", help="tiny-random, 2 scenes, euler-4 vs dpm-2 (CI)")
    args = parser.parse_args(argv)
    if args.scenes < 1:
        parser.error(f"--scenes must be at least 1, got {args.scenes}")
    logging.basicConfig(level=logging.WARNING)
    torch.set_grad_enabled(False)
    spec, scenes, settings = args.model, args.scenes, SETTINGS
    if args.smoke:
        spec, scenes, settings = "tiny-random", 2, (("euler", 4), ("dpm", 2))
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}; model {spec}")
    model = SeedX.from_pretrained(spec)
    rows = bench(model, scenes, settings, args.image_size)
    print(f"\n## de-tokenizer reconstruction, {scenes} held-out scenes, {args.image_size} px")
    print("| setting (scheduler-UNet evaluations) | all_ok | shape_ok | colour_ok | s / image |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['setting']} | {row['all_ok']:.3f} | {row['shape_ok']:.3f} | {row['colour_ok']:.3f} "
            f"| {row['seconds_per_image']:.2f} |"
        )
    reference = rows[0]
    reaching = [r["setting"] for r in rows[1:] if r["all_ok"] >= reference["all_ok"]]
    print(f"settings reaching {reference['setting']} all_ok ({reference['all_ok']:.3f}): {reaching or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
