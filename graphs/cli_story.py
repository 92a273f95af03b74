"""``seedx-agent story`` and ``seedx-agent slides``: run the story and slides graphs with tqdm progress bars.

``register(subparsers)`` adds both subcommands to the main CLI's ``argparse`` sub-parsers; each sets
``func`` to a handler that takes the parsed arguments and returns an exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["cmd_slides", "cmd_story", "register"]

logger = logging.getLogger(__name__)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _common(parser: argparse.ArgumentParser, default_out: str) -> None:
    parser.add_argument("--out", default=default_out, help=f"output folder (default {default_out})")
    parser.add_argument(
        "--model", default="mini", help="mini (bundled miniature; tiny-random while it is missing), a preset or a PATH"
    )
    parser.add_argument("--memory", default=None, help="image memory folder (default OUT/memory)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; step/slide i uses seed + i")
    parser.add_argument(
        "--num-inference-steps", type=_positive_int, default=None, help="de-tokenizer diffusion steps (model default)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``story`` and ``slides`` subcommands."""
    story = subparsers.add_parser("story", help="illustrate a story step by step into a storyboard")
    story.add_argument("--premise", required=True, help="what the story is about, e.g. 'a small red circle'")
    story.add_argument("--steps", type=_positive_int, default=25, help="number of steps (default 25)")
    _common(story, "outputs/story")
    story.set_defaults(func=cmd_story)

    slides = subparsers.add_parser("slides", help="plan, illustrate, critique and write a .pptx deck")
    slides.add_argument("--topic", required=True, help="what the deck is about, e.g. 'red circles'")
    slides.add_argument("--slides", type=_positive_int, default=4, help="number of slides (default 4)")
    slides.add_argument("--max-refine", type=int, default=2, help="refinements per slide at most (default 2)")
    _common(slides, "outputs/slides")
    slides.set_defaults(func=cmd_slides)


def _open(args: argparse.Namespace) -> tuple[Any, Any, Path]:
    from .runtime import load_engine, open_memory

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    engine = load_engine(args.model)
    return engine, open_memory(Path(args.memory) if args.memory else out / "memory", engine), out


def cmd_story(args: argparse.Namespace) -> int:
    """Run the story graph; print the storyboard path and the story's id as JSON."""
    from tqdm import tqdm

    from .story import create_story_graph

    engine, memory, out = _open(args)
    try:
        graph = create_story_graph(
            engine, memory, steps=args.steps, out_dir=out, num_inference_steps=args.num_inference_steps
        )
        final: dict[str, Any] = {}
        with tqdm(total=args.steps, desc="story", unit="step", disable=args.quiet) as bar:
            for mode, chunk in graph.stream(
                {"premise": args.premise, "base_seed": args.seed}, stream_mode=["custom", "values"]
            ):
                if mode == "values":
                    final = chunk
                elif chunk.get("event") == "story_step":
                    bar.update(1)
                    bar.set_postfix_str(chunk["sentence"][:40])
    finally:
        memory.close()
    print(
        json.dumps({"story_id": final["story_id"], "namespace": final["namespace"], "storyboard": final["storyboard"]})
    )
    return 0


def cmd_slides(args: argparse.Namespace) -> int:
    """Run the slides graph; print the deck and preview paths as JSON."""
    from tqdm import tqdm

    from .slides import create_slides_graph

    engine, memory, out = _open(args)
    try:
        graph = create_slides_graph(
            engine,
            memory,
            out_dir=out,
            n_slides=args.slides,
            max_refine=args.max_refine,
            num_inference_steps=args.num_inference_steps,
        )
        final: dict[str, Any] = {}
        with tqdm(total=args.slides, desc="slides", unit="picture", disable=args.quiet) as bar:
            for mode, chunk in graph.stream(
                {"topic": args.topic, "base_seed": args.seed}, stream_mode=["custom", "values"]
            ):
                if mode == "values":
                    final = chunk
                elif chunk.get("event") == "slide_picture":
                    bar.update(1)
                elif chunk.get("event") == "slide_refine":
                    bar.total += 1
                    bar.update(1)
    finally:
        memory.close()
    passed = sum(1 for slide in final["slides"] if slide["passed"])
    print(json.dumps({"pptx": final["pptx"], "previews": final["previews"], "passed": passed, "slides": args.slides}))
    return 0
