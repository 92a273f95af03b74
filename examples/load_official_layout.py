"""Exercise the real-weight loading path on a tiny synthetic checkpoint, end to end, in a few seconds.

1. build tiny-random components (all three LLM variants, both de-tokenizer stages);
2. write them in the OFFICIAL release layout (pickle .bin files, HF llm/ shards, SDXL folder, ...);
3. load that layout back strictly (``allow_pickle=True``: we wrote those pickles ourselves);
4. convert it to our safetensors layout and load that too;
5. report keys and parameters per component and the time each step took.

Run: ``python examples/load_official_layout.py [--workdir DIR]`` (default: a temporary folder).
For the real release, the same calls are ``OfficialLayout.discover("pretrained")`` and
``load_official(layout, SeedXConfig.from_preset("seed-x-i"), allow_pickle=True, dtype=torch.float16)``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from seedx_agent.config import VARIANTS, SeedXConfig
from seedx_agent.miniature.official_layout import write_official_layout
from seedx_agent.pipeline.components import build_components
from seedx_agent.pipeline.tokenizer import SeedXTokenizer
from seedx_agent.weights import (
    convert_official,
    describe,
    load_components,
    load_official,
)

logger = logging.getLogger("load_official_layout")


def run(workdir: Path) -> dict[str, Any]:
    """Do the five steps inside ``workdir``; return the per-component summary and step timings."""
    timings: dict[str, float] = {}
    config = SeedXConfig.from_preset("tiny-random")

    start = time.perf_counter()
    source = build_components(config, tokenizer=SeedXTokenizer.tiny(), variants=VARIANTS, stages=(1, 2), seed=0)
    # The release ships one SDXL VAE for both stages; random init gave each stage its own.
    source.detokenizers[2].vae.load_state_dict(source.detokenizers[1].vae.state_dict())
    timings["build"] = time.perf_counter() - start

    start = time.perf_counter()
    layout = write_official_layout(source, workdir / "pretrained")
    timings["write official"] = time.perf_counter() - start

    start = time.perf_counter()
    loaded = load_official(layout, config, variants=VARIANTS, stages=(1, 2), allow_pickle=True)
    timings["load official"] = time.perf_counter() - start

    start = time.perf_counter()
    converted = convert_official(
        layout.root, workdir / "converted", variants=VARIANTS, stages=(1, 2), allow_pickle=True, config=config
    )
    reloaded = load_components(converted, verify=True)
    timings["convert + load ours"] = time.perf_counter() - start

    identical = all(
        torch.equal(tensor, other.state_dict()[key])
        for (_, module), (_, other) in zip(loaded.modules(), reloaded.modules())
        for key, tensor in module.state_dict().items()
    )
    return {"components": describe(loaded), "timings": timings, "identical_after_conversion": identical}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report = run(args.workdir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            report = run(Path(tmp))
    for name, info in report["components"].items():
        logger.info("%-20s %4d keys %10d parameters  dtypes %s", name, info["keys"], info["parameters"], info["dtypes"])
    for step, seconds in report["timings"].items():
        logger.info("%-20s %.2f s", step, seconds)
    logger.info("converted checkpoint identical to the official one: %s", report["identical_after_conversion"])
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
