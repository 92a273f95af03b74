"""Train one arm of an LLM pre-training comparison on the miniature world and score it on held-out samples.

A fresh miniature LVLM is pre-trained (``lvlm_pretrain``, the ``seed-x`` style task mixture) on a finished
ViT, with the regression weight and optimiser settings given on the command line. The arm is then scored
on held-out seeds without any decoding: teacher-forced exact answers (``probes.teacher_forced_exact``,
equal to greedy exact match) for captions, VQA and grounding, and the output resampler's regression MSE on
text-to-image prompts. Run two arms with the same steps to compare settings, e.g.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/compare_lvlm_pretrain.py runs/cmp/rec6 --rec-scale 6 --steps 800
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/compare_lvlm_pretrain.py runs/cmp/rec1 --rec-scale 1 --steps 800

Each prints (and writes to OUT/result.json) one JSON line; re-running resumes a stopped arm.
``--score-only`` scores the finished ``lvlm-pretrain`` stage in OUT (e.g. ``runs/mini8``) without training.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from seedx_agent.config import SeedXConfig
from seedx_agent.miniature import world
from seedx_agent.miniature.probes import teacher_forced_exact
from seedx_agent.miniature.world_data import WorldData
from seedx_agent.pipeline.components import build_components
from seedx_agent.pipeline.lvlm import SeedXLVLM
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.pipeline.vision import QwenViT
from seedx_agent.training.loop import LoopConfig
from seedx_agent.training.recipes import _load_module, frozen, lvlm_forward, lvlm_pretrain
from seedx_agent.training.samples import collate

SCORED_TASKS = ("caption", "vqa", "grounding")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="folder of this arm (checkpoints, log, result.json)")
    parser.add_argument("--rec-scale", type=float, default=1.0, help="weight of the regression loss (SEED-X: 6)")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vit", default="runs/mini3/vit", help="a finished 'vit' stage folder")
    parser.add_argument("--n", type=int, default=60, help="held-out samples per scored task")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--score-only", action="store_true", help="score OUT/lvlm-pretrain, train nothing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = SeedXConfig.from_preset("mini").with_rec_loss_scale(args.rec_scale)
    tokenizer = SeedXTokenizer.tiny()
    parts = build_components(config, tokenizer=tokenizer, variants=("seed-x-i",), stages=(1,), seed=0)
    _load_module(parts.vision, Path(args.vit), "vision")
    vision = frozen(parts.vision)
    lvlm = parts.lvlms["seed-x-i"]
    data = WorldData(config, tokenizer, seed=0)
    if args.score_only:
        stage = Path(args.out) / "lvlm-pretrain"
        _load_module(lvlm, stage, "lvlm")
        print(json.dumps({"scored": str(stage), **heldout_scores(lvlm, vision, data, args.n)}))
        return
    started = time.perf_counter()
    result = lvlm_pretrain(
        lvlm,
        vision,
        lambda step: data.lvlm_examples(step, args.batch, style="seed-x"),
        args.out,
        LoopConfig(steps=args.steps, lr=args.lr, warmup_steps=100, grad_clip=args.grad_clip),
        pad_token_id=tokenizer.pad_token_id,
    )
    report: dict[str, object] = {
        "rec_scale": args.rec_scale,
        "steps": args.steps,
        "lr": args.lr,
        "grad_clip": args.grad_clip,
        "train_s": round(time.perf_counter() - started),
        "final_losses": result.losses,
    }
    report.update(heldout_scores(lvlm, vision, data, args.n))
    line = json.dumps(report)
    print(line)
    (Path(args.out) / "result.json").write_text(line + "\n")


def heldout_scores(
    lvlm: SeedXLVLM, vision: QwenViT, data: WorldData, n: int, *, style: str = "seed-x"
) -> dict[str, float]:
    """Teacher-forced exact answers per scored task and the text-to-image regression MSE, on held-out seeds, with
    prompts in ``style``."""
    pad = data.tokenizer.pad_token_id
    scores: dict[str, float] = {}
    for task in SCORED_TASKS:
        samples = world.make_dataset("heldout", n, task, 0, image_size=data.vit_size)
        examples = [data.example_of(s, style=style) for s in samples]  # type: ignore[arg-type]
        scores[f"{task}_exact"] = teacher_forced_exact(lvlm, vision, examples, pad_token_id=pad)
    samples = world.make_dataset("heldout", n, "text_to_image", 0, image_size=data.vit_size)
    with torch.no_grad():
        lvlm.eval()
        batch = collate([data.example_of(s, style=style) for s in samples], pad_token_id=pad)  # type: ignore[arg-type]
        scores["t2i_regression_mse"] = float(lvlm_forward(lvlm, vision, batch).rec_loss)
    return scores


if __name__ == "__main__":
    main()
