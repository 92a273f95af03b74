"""``seedx-agent`` command line: the CPU demo, checkpoint conversion and model info.

The CLI sits on the top floor: it wires the other layers together and nothing imports it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

__all__ = ["main"]

logger = logging.getLogger("seedx_agent")


def _load_model(spec: str, *, variants: tuple[str, ...], allow_pickle: bool = False):
    from seedx_agent.config import PRESETS
    from seedx_agent.model import SeedX

    if spec in PRESETS:
        return SeedX.from_preset(spec, variants=variants)
    return SeedX.from_pretrained(spec, variants=variants, allow_pickle=allow_pickle)


def cmd_demo(args: argparse.Namespace) -> int:
    """Describe, ground, generate and edit a scene; write PNGs and a report."""
    import PIL.Image
    import PIL.ImageDraw

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = _load_model(args.model, variants=("seed-x-i", "seed-x-edit"))
    report = {"model": args.model, "variants": list(model.variants), "load_s": round(time.perf_counter() - start, 2)}
    if args.model.startswith("tiny-random"):
        report["note"] = "tiny-random has random weights: outputs exercise the pipeline, they are not meaningful"

    scene = PIL.Image.new("RGB", (96, 64), "white")
    draw = PIL.ImageDraw.Draw(scene)
    draw.ellipse((8, 8, 40, 40), fill=(220, 30, 30))
    draw.rectangle((56, 24, 88, 56), fill=(30, 30, 220))
    scene.save(out / "input.png")

    t = time.perf_counter()
    answer = model.comprehend(scene, "Describe the image.")
    report["comprehend"] = {"text": answer.text, "seconds": round(time.perf_counter() - t, 2)}
    t = time.perf_counter()
    grounding = model.ground(scene, "the red circle")
    report["ground"] = {
        "boxes": [b.as_tuple() for b in grounding.boxes],
        "text": grounding.text,
        "seconds": round(time.perf_counter() - t, 2),
    }
    t = time.perf_counter()
    generated = model.generate_image("a red circle at the top left", seed=args.seed, progress=not args.quiet)
    generated.image.save(out / "generated.png")
    report["generate_image"] = {"file": "generated.png", "seconds": round(time.perf_counter() - t, 2)}
    t = time.perf_counter()
    edited = model.edit_image(scene, "Make the circle green.", seed=args.seed, progress=not args.quiet)
    edited.image.save(out / "edited.png")
    report["edit_image"] = {"file": "edited.png", "seconds": round(time.perf_counter() - t, 2)}
    report["total_s"] = round(time.perf_counter() - start, 2)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Official release folder -> our safetensors layout with a config.json."""
    from seedx_agent.checkpoints import convert_official

    start = time.perf_counter()
    convert_official(
        Path(args.source),
        Path(args.out),
        variants=tuple(args.variants),
        stages=tuple(args.stages) or None,
        allow_pickle=args.allow_pickle,
        vit_path=args.vit,
        sdxl_path=args.sdxl,
    )
    print(f"converted {args.source} -> {args.out} in {time.perf_counter() - start:.1f}s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print the components and parameter counts of a model."""
    model = _load_model(args.model, variants=tuple(args.variants), allow_pickle=args.allow_pickle)
    info = {name: sum(p.numel() for p in module.parameters()) for name, module in model.parts.modules()}
    print(json.dumps({"config": model.config.name, "parameters": info}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seedx-agent", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run comprehension, grounding, generation and editing once")
    demo.add_argument("--model", default="tiny-random", help="preset name or checkpoint folder")
    demo.add_argument("--out", default="outputs/demo", help="folder for PNGs and report.json")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)

    convert = sub.add_parser("convert", help="convert the official release to our safetensors layout")
    convert.add_argument("source", help="folder of the official release (SEED-X-17B layout)")
    convert.add_argument("out", help="output folder")
    convert.add_argument("--variants", nargs="+", default=["seed-x-i"], choices=["seed-x", "seed-x-i", "seed-x-edit"])
    convert.add_argument("--stages", nargs="*", type=int, default=[], choices=[1, 2])
    convert.add_argument("--vit", default=None, help="path of qwen_vit_G.pt (default: SOURCE/QwenViT/qwen_vit_G.pt)")
    convert.add_argument("--sdxl", default=None, help="SDXL-base folder (default: SOURCE/stable-diffusion-xl-base-1.0)")
    convert.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read the official pickle .bin/.pt files (torch.load weights_only=True)",
    )
    convert.set_defaults(func=cmd_convert)

    info = sub.add_parser("info", help="print components and parameter counts")
    info.add_argument("--model", default="tiny-random")
    info.add_argument("--variants", nargs="+", default=["seed-x-i"])
    info.add_argument("--allow-pickle", action="store_true")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    from seedx_agent.errors import SeedXError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except SeedXError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
