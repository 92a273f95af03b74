"""Where does a trained miniature lose the scene? Prints ridge-probe accuracies of per-cell kind/colour at
each hand-off (ViT tokens, the LLM's input-resampler tokens, the de-tokenizer's perceiver outputs) and the
stage-1 de-tokenizer's loss per timestep band with own vs. swapped features (``miniature/probes.py``).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/probe_mini.py [mini | runs/<run>/model] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from seedx_agent.miniature.probes import cell_probes, conditioning_use
from seedx_agent.miniature.world_data import WorldData
from seedx_agent.model import SeedX
from seedx_agent.pipeline.anyres import THUMBNAIL_POSITION
from seedx_agent.training.recipes import vit_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", default="mini", help="'mini' (bundled) or a saved model folder")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = SeedX.from_pretrained(args.model)
    parts = model.parts
    lvlm = next(iter(parts.lvlms.values()))
    detok = parts.detokenizers[1]
    data = WorldData(model.config, parts.tokenizer, seed=0)
    position = torch.tensor([THUMBNAIL_POSITION])

    def vit(batch):
        return vit_features(parts.vision, batch.vit_pixels)

    features = {
        "ViT tokens": vit,
        "LLM input resampler": lambda b: lvlm.embed_images(vit(b), position.expand(len(b.scenes), -1)),
        "de-tokenizer perceiver": lambda b: detok.encode(vit(b))[0],
    }
    print(f"{'features':<24} {'kind':>7} {'colour':>7}")
    for name, accuracy in cell_probes(features, data).items():
        print(f"{name:<24} {accuracy['kind']:>7.1%} {accuracy['colour']:>7.1%}")
    print(f"\n{'timesteps':<12} {'own':>7} {'swapped':>8}   (stage-1 loss, raw ViT tokens)")
    for band in conditioning_use(detok, parts.vision, data):
        print(f"[{band.low:>3}, {band.high:>4})  {band.own:>7.4f} {band.other:>8.4f}")
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
