"""Embedding SEED-X in a plain Python program: load, describe, ground, generate and edit (no LangChain).

    python examples/embed_seedx.py [--model mini|tiny-random|PATH] [--out DIR]

``SeedX.from_pretrained`` takes ``"mini"`` (the bundled trained miniature), a preset such as ``"tiny-random"`` (random
weights: the pipeline runs, the outputs mean nothing) or a checkpoint folder. Wrap the model in ``SeedXEngine``
when several threads share it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from seedx_agent import SeedX, SeedXEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="mini", help="mini (the bundled trained miniature), tiny-random (random weights) or a folder"
    )
    parser.add_argument(
        "--num-inference-steps", "--steps", type=int, default=None, help="diffusion steps per picture (model default)"
    )
    parser.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="seedx-embed-"))
    out.mkdir(parents=True, exist_ok=True)

    engine = SeedXEngine(SeedX.from_pretrained(args.model, variants=("seed-x-i", "seed-x-edit")))  # thread-safe access
    scene = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(scene).ellipse((4, 4, 24, 24), fill=(200, 20, 20))

    print("describe:", engine.comprehend(scene, "describe the picture").text)
    print("ground:", [box.as_tuple() for box in engine.ground(scene, "the red circle").boxes])
    steps = args.num_inference_steps
    generated = engine.generate_image("a blue square in the center", seed=0, num_inference_steps=steps)
    generated.image.save(out / "generated.png")
    edited = engine.edit_image(scene, "make the red circle green", seed=0, num_inference_steps=steps)
    edited.image.save(out / "edited.png")
    print(f"wrote {out / 'generated.png'} and {out / 'edited.png'}")


if __name__ == "__main__":
    main()
