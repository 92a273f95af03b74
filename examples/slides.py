"""Plan, illustrate, critique and refine a slide deck; writes ``deck.pptx`` and ``slide_NN.png`` previews.

    python examples/slides.py --topic "red circles and blue squares" --slides 4 --out outputs/slides

Uses the bundled miniature ("mini") when present, else "tiny-random" (random weights: pictures are noise).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from seedx_agent.graphs.runtime import load_engine, open_memory
from seedx_agent.graphs.slides import create_slides_graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topic", default="red circles and blue squares")
    parser.add_argument("--slides", type=int, default=4)
    parser.add_argument("--max-refine", type=int, default=2)
    parser.add_argument("--model", default="mini", help="mini (falls back to tiny-random), a preset or a folder")
    parser.add_argument("--num-inference-steps", type=int, default=None)
    parser.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="seedx-slides-"))

    engine = load_engine(args.model)
    with open_memory(out / "memory", engine) as memory:
        graph = create_slides_graph(
            engine,
            memory,
            out_dir=out,
            n_slides=args.slides,
            max_refine=args.max_refine,
            num_inference_steps=args.num_inference_steps,
        )
        for event in graph.stream({"topic": args.topic}, stream_mode="custom"):
            if event["event"] == "slide_picture":
                print(f"slide {event['slide']}: {event['mode']} picture {event['image_id']}")
            elif event["event"] == "slide_critique":
                print(f"slide {event['slide']}: critique attempt {event['attempt']} score {event['score']:.2f}")
            elif event["event"] == "slides_done":
                print(f"deck: {event['pptx']}")


if __name__ == "__main__":
    main()
