"""Generate -> verify -> edit until the picture matches the request; every version saved as PNG with a report.

    python examples/refine.py [--model tiny-random|mini|PATH] [--prompt TEXT] [--rounds N] [--out DIR]

With ``tiny-random`` (random weights) nothing verifies, so the loop runs to the round limit; with the trained
miniature (``--model mini``) a request in the miniature world's vocabulary can verify early.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from seedx_agent.graphs.refine import create_refine_graph
from seedx_agent.graphs.runtime import load_engine, open_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random", help="mini | tiny-random | checkpoint folder")
    parser.add_argument("--prompt", default="a red circle at the top left")
    parser.add_argument("--rounds", type=int, default=2, help="at most this many edits")
    parser.add_argument("--steps", type=int, default=2, help="diffusion steps")
    parser.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="seedx-refine-"))
    out.mkdir(parents=True, exist_ok=True)

    engine = load_engine(args.model)
    with open_memory(out / "memory", engine) as memory:
        graph = create_refine_graph(engine, memory, max_rounds=args.rounds, num_inference_steps=args.steps)
        final = {}
        for mode, chunk in graph.stream({"request": args.prompt, "seed": 0}, stream_mode=["custom", "values"]):
            if mode == "custom":
                print("progress:", chunk)
            else:
                final = chunk
        for index, version in enumerate(final["versions"]):
            memory.load(version["image_id"]).save(out / f"{index:02d}_{version['operation']}.png")
        lineage = [record.id for record in memory.lineage(final["image_id"])]
        report = {
            "request": args.prompt,
            "verified": final["verified"],
            "rounds": final["round"],
            "lineage": lineage,
            "verdicts": final["verdicts"],
        }
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"verified={final['verified']} after {final['round']} edit(s); {len(lineage)} version(s) in {out}")


if __name__ == "__main__":
    main()
