"""Write and illustrate a story with the story graph: ``storyboard.html``, beat PNGs and ``manifest.json``.

    python examples/story.py --premise "a fox who learns to fly" --beats 12 --model PATH --planner seedx
    python examples/story.py --premise "a small red circle at the top left" --beats 25   # the miniature

``--planner`` picks who writes the beats: ``seedx`` (ChatSeedX on the same model), ``world`` (the miniature's
plug-in, the default for mini/tiny-random) or ``module:attr`` (any LangChain chat model or factory).
"""

from __future__ import annotations

from langgraph.checkpoint.memory import InMemorySaver
from seedx_agent.graphs.story import create_story_graph
from workflow_common import open_workflow, workflow_parser


def main() -> None:
    parser = workflow_parser(__doc__)
    parser.add_argument("--premise", default="a small red circle at the top left", help="what the story is about")
    parser.add_argument("--beats", type=int, default=25, help="number of story beats (one picture each)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the pictures (default 0)")
    args = parser.parse_args()
    with open_workflow(args, "seedx-story-") as (engine, memory, planner, out):
        graph = create_story_graph(
            engine,
            memory,
            planner=planner,
            steps=args.beats,
            out_dir=out,
            num_inference_steps=args.num_inference_steps,
            checkpointer=InMemorySaver(),
        )
        config = {"configurable": {"thread_id": "example"}}
        for event in graph.stream(
            {"premise": args.premise, "base_seed": args.seed}, config, stream_mode="custom", durability="sync"
        ):
            if event["event"] == "story_step":
                verdict = {True: "consistent", False: "check failed", None: "not checked"}[event["consistent"]]
                print(f"beat {event['step']:3d} ({event['mode']}, {verdict}): {event['text']} -> {event['image_id']}")
        final = graph.get_state(config).values
        lineage = memory.lineage(final["recent"][-1]["image_id"])
        print(f"lineage of the last picture: {len(lineage)} pictures")
    print(f"storyboard: {final['storyboard']}\nmanifest: {final['manifest']}")


if __name__ == "__main__":
    main()
