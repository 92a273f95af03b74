"""Generate -> verify -> correct until the picture matches the request; every version saved as PNG with a report.

    python examples/refine.py [--model mini|tiny-random|PATH] [--planner seedx|world|module:attr] [--request TEXT]

The planner turns the request into checks SEED-X verifies; with ``tiny-random`` (random weights) nothing
verifies, so the loop runs to the round limit; the miniature verifies requests in its world's vocabulary.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from seedx_agent.graphs.refine import create_refine_graph
from seedx_agent.graphs.runtime import default_planner, load_engine, load_planner, open_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="mini", help="mini (the bundled trained miniature), tiny-random (random weights) or a folder"
    )
    parser.add_argument("--planner", default=None, help="seedx | world | module:attr (default: by model)")
    parser.add_argument("--request", default="a red circle at the top left", help="what the picture should show")
    parser.add_argument("--rounds", type=int, default=2, help="at most this many edits")
    parser.add_argument(
        "--num-inference-steps", "--steps", type=int, default=None, help="diffusion steps per picture (model default)"
    )
    parser.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="seedx-refine-"))
    out.mkdir(parents=True, exist_ok=True)

    engine = load_engine(args.model)
    with open_memory(out / "memory", engine) as memory:
        planner = load_planner(args.planner or default_planner(args.model), engine, memory)
        graph = create_refine_graph(
            engine, memory, planner=planner, max_rounds=args.rounds, num_inference_steps=args.num_inference_steps
        )
        final = {}
        for mode, chunk in graph.stream({"request": args.request, "seed": 0}, stream_mode=["custom", "values"]):
            if mode == "custom":
                details = {k: v for k, v in chunk.items() if k != "event"}
                print(f"{chunk['event']}: {details}")
            else:
                final = chunk
        for index, version in enumerate(final["versions"]):
            memory.load(version["image_id"]).save(out / f"{index:02d}_{version['operation']}.png")
        lineage = [record.id for record in memory.lineage(final["image_id"])]
        report = {
            "request": args.request,
            "prompt": final["prompt"],
            "checks": final["checks"],
            "verified": final["verified"],
            "rounds": final["round"],
            "lineage": lineage,
            "verdicts": final["verdicts"],
        }
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"verified={final['verified']} after {final['round']} correction(s); {len(lineage)} version(s) in {out}")


if __name__ == "__main__":
    main()
