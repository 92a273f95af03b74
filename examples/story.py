"""Illustrate a story with the story graph and write a storyboard (``storyboard.html`` + step PNGs).

    python examples/story.py --premise "a small red circle at the top left" --steps 25 --out outputs/story

Uses the bundled miniature ("mini") when present, else "tiny-random" (random weights: pictures are noise).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from langgraph.checkpoint.memory import InMemorySaver
from seedx_agent.graphs.runtime import load_engine, open_memory
from seedx_agent.graphs.story import create_story_graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--premise", default="a small red circle at the top left")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="mini", help="mini (falls back to tiny-random), a preset or a folder")
    parser.add_argument("--num-inference-steps", type=int, default=None)
    parser.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="seedx-story-"))

    engine = load_engine(args.model)
    with open_memory(out / "memory", engine) as memory:
        graph = create_story_graph(
            engine,
            memory,
            steps=args.steps,
            out_dir=out,
            num_inference_steps=args.num_inference_steps,
            checkpointer=InMemorySaver(),
        )
        config = {"configurable": {"thread_id": "example"}}
        for event in graph.stream(
            {"premise": args.premise, "base_seed": args.seed}, config, stream_mode="custom", durability="sync"
        ):
            if event["event"] == "story_step":
                print(f"step {event['step']:3d} (seed {event['seed']}): {event['sentence']} -> {event['image_id']}")
        final = graph.get_state(config).values
        lineage = memory.lineage(final["recent"][-1]["image_id"])
        print(f"lineage of the last picture: {len(lineage)} pictures")
    print(f"storyboard: {final['storyboard']}")


if __name__ == "__main__":
    main()
