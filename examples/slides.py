"""Plan, illustrate, critique and refine a slide deck; writes ``deck.pptx`` and ``slide_NN.png`` previews.

    python examples/slides.py --topic "how tides work" --slides 5 --model PATH --planner seedx
    python examples/slides.py --topic "red circles and blue squares" --slides 4   # the miniature

``--planner``: ``seedx`` (ChatSeedX on the same model), ``world`` (the miniature's plug-in, the default for
mini/tiny-random) or ``module:attr`` (any LangChain chat model or factory).
"""

from __future__ import annotations

from seedx_agent.graphs.slides import create_slides_graph
from workflow_common import open_workflow, workflow_parser


def main() -> None:
    parser = workflow_parser(__doc__)
    parser.add_argument("--topic", default="red circles and blue squares", help="what the deck is about")
    parser.add_argument("--slides", type=int, default=4, help="number of slides")
    parser.add_argument("--max-refine", type=int, default=2, help="corrections per slide")
    args = parser.parse_args()
    with open_workflow(args, "seedx-slides-") as (engine, memory, planner, out):
        graph = create_slides_graph(
            engine,
            memory,
            planner=planner,
            out_dir=out,
            n_slides=args.slides,
            max_refine=args.max_refine,
            num_inference_steps=args.num_inference_steps,
        )
        for event in graph.stream({"topic": args.topic}, stream_mode="custom"):
            if event["event"] == "slide_picture":
                print(f"slide {event['slide']}: {event['mode']} picture {event['image_id']}")
            elif event["event"] == "slide_critique":
                verdict = "passes its checks" if event["passed"] else "fails a check"
                print(f"slide {event['slide']}: attempt {event['attempt']} {verdict}")
            elif event["event"] == "slide_refine":
                print(f"slide {event['slide']}: {event['action']} ({event['instruction']})")
            elif event["event"] == "slides_done":
                print(f"deck: {event['pptx']}")


if __name__ == "__main__":
    main()
