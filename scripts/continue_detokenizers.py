"""Continue training a model's de-tokenizers on the miniature world, then write the model with them swapped in.

Stage 1 (reconstruction) resumes from the model's stage-1 weights on a fresh warm-up + cosine schedule;
stage 2 (editing) then starts from the continued stage 1 as the recipe does (``stage2_from_stage1``: zero-
extended ``conv_in``). The ViT and LLM are untouched: the LLM regresses onto the same frozen ViT's features,
so a better de-tokenizer drops in. Both stages checkpoint in OUT and resume when re-run. Example (the
bundled miniature's de-tokenizers; see README, "The miniature SEED-X"):

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/continue_detokenizers.py runs/detok9 --model mini \
        --stage1-steps 4500 --stage2-steps 1500 --batch 32 --threads 2
    HF_HUB_OFFLINE=1 .venv/bin/seedx-agent eval mini --model runs/detok9/model --n 50 \
        --tasks reconstruction text_to_image edit
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from seedx_agent.miniature.world_data import WorldData
from seedx_agent.model import SeedX
from seedx_agent.training.loop import LoopConfig
from seedx_agent.training.recipes import (
    _load_module,
    detokenizer_stage1,
    detokenizer_stage2,
    frozen,
    stage2_from_stage1,
)
from seedx_agent.weights import save_components


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="run folder: detokenizer-1/, detokenizer-2/ (checkpoints, logs) and model/")
    parser.add_argument("--model", default="mini", help="model to start from and to copy the rest of (name or path)")
    parser.add_argument("--stage1-steps", type=int, default=4500)
    parser.add_argument("--stage2-steps", type=int, default=1500)
    parser.add_argument("--stage1-lr", type=float, default=3e-4)
    parser.add_argument("--stage2-lr", type=float, default=2e-4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (checkpointed) after this long")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.monotonic()

    def remaining() -> float | None:
        return None if args.max_minutes is None else max(0.1, args.max_minutes - (time.monotonic() - started) / 60)

    out = Path(args.out)
    model = SeedX.from_pretrained(args.model, dtype=torch.float32)
    parts = model.parts
    if 1 not in parts.detokenizers or 2 not in parts.detokenizers:
        raise SystemExit(f"{args.model!r} must hold both de-tokenizer stages (it has {sorted(parts.detokenizers)})")
    vision = frozen(parts.vision)
    data = WorldData(model.config, model.tokenizer, seed=0)
    report: dict[str, object] = {"from": args.model, **vars(args)}

    detok1 = parts.detokenizers[1]
    result = detokenizer_stage1(
        detok1,
        vision,
        data,
        out / "detokenizer-1",
        LoopConfig(steps=args.stage1_steps, lr=args.stage1_lr, warmup_steps=100, max_minutes=remaining()),
        batch_size=args.batch,
    )
    report["detokenizer-1"] = result.losses
    if not result.finished:
        print(f"stage 1 stopped at step {result.step}; run the same command again to resume")
        return
    _load_module(detok1, out / "detokenizer-1", "detokenizer")  # the finished weights, also when resumed
    detok2 = stage2_from_stage1(detok1, model.config)
    result = detokenizer_stage2(
        detok2,
        vision,
        data,
        out / "detokenizer-2",
        LoopConfig(steps=args.stage2_steps, lr=args.stage2_lr, warmup_steps=50, max_minutes=remaining()),
        batch_size=args.batch,
    )
    report["detokenizer-2"] = result.losses
    if not result.finished:
        print(f"stage 2 stopped at step {result.step}; run the same command again to resume")
        return
    _load_module(detok2, out / "detokenizer-2", "detokenizer")
    parts.detokenizers[2] = detok2
    for _, module in parts.modules():
        module.to(torch.float16).eval()
    folder = save_components(parts, out / "model", overwrite=True)
    report["model"] = str(folder)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
