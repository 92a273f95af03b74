"""``seedx-agent story | slides | refine``: the three workflows from the command line, with progress bars.

``register(subparsers)`` adds the subcommands to the main CLI's ``argparse`` sub-parsers; each sets ``func``
to a handler that takes the parsed arguments and returns an exit code. The text (premise, topic, request) is
the positional argument; ``--planner`` picks who plans: ``seedx`` (ChatSeedX on the same model), ``world``
(the miniature's plug-in; the default for ``--model mini`` and ``tiny-random``) or ``module:attr`` (any
importable chat model or factory). This module is CLI wiring: the only graph-side place that names plug-ins.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from seedx_agent.cli.chat import (
    MODEL_HELP,
    add_chroma_flag,
    add_steps_flag,
    check_chroma,
    check_model,
    check_namespace,
    check_output_folder,
    check_planner,
    check_text,
    non_negative_int,
    positive_int,
)

__all__ = ["cmd_refine", "cmd_slides", "cmd_story", "register"]

logger = logging.getLogger(__name__)

EXIT_NOT_VERIFIED = 3  # refine finished but the last picture failed a check


_EXAMPLES = {
    "premise": "a fox who learns to fly",
    "topic": "how tides work",
    "request": "a lighthouse at dusk, warm light, two boats",
}


def _text(parser: argparse.ArgumentParser, name: str, example: str) -> None:
    """The workflow's text as a positional argument, with the old ``--name`` flag kept as an alternative."""
    parser.add_argument(name, nargs="?", default=None, help=f"e.g. {example!r}")
    parser.add_argument(f"--{name}", dest=f"{name}_flag", default=None, help=argparse.SUPPRESS)


def _common(parser: argparse.ArgumentParser, default_out: str, *, steps_alias: bool) -> None:
    parser.add_argument("--out", default=default_out, help=f"output folder (default {default_out})")
    parser.add_argument("--model", default="mini", help=MODEL_HELP)
    parser.add_argument(
        "--planner",
        default=None,
        help="who plans: seedx (ChatSeedX on --model), world (the miniature's plug-in) or module:attr "
        "(an importable chat model or factory); default: world for mini/tiny-random, else seedx",
    )
    parser.add_argument("--memory", default=None, help="image memory folder (default OUT/memory)")
    add_chroma_flag(parser)
    parser.add_argument("--seed", type=non_negative_int, default=0, help="base seed; picture i uses seed + i")
    add_steps_flag(parser, steps_alias=steps_alias)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``story``, ``slides`` and ``refine`` subcommands."""
    story = subparsers.add_parser("story", help="write and illustrate a story beat by beat into a storyboard")
    _text(story, "premise", _EXAMPLES["premise"])
    story.add_argument(
        "--beats",
        "--steps",
        dest="beats",
        type=positive_int,
        default=25,
        metavar="N",
        help="number of story beats (pages, one picture each; default 25); --steps is its old name here, "
        "diffusion steps are --num-inference-steps",
    )
    story.add_argument(
        "--recall", type=non_negative_int, default=2, help="pictures per character used as context (default 2)"
    )
    _common(story, "outputs/story", steps_alias=False)
    story.set_defaults(func=cmd_story)

    slides = subparsers.add_parser("slides", help="plan, illustrate, critique and write a .pptx deck")
    _text(slides, "topic", _EXAMPLES["topic"])
    slides.add_argument("--slides", type=positive_int, default=4, help="number of slides (default 4)")
    slides.add_argument("--max-refine", type=non_negative_int, default=2, help="corrections per slide (default 2)")
    _common(slides, "outputs/slides", steps_alias=False)
    slides.set_defaults(func=cmd_slides)

    refine = subparsers.add_parser(
        "refine", help="generate, verify with SEED-X and correct until the picture matches (exit 3: not verified)"
    )
    _text(refine, "request", _EXAMPLES["request"])
    refine.add_argument("--prompt", dest="request_flag", default=None, help=argparse.SUPPRESS)
    refine.add_argument("--rounds", type=non_negative_int, default=3, help="corrections at most (default 3)")
    refine.add_argument("--namespace", default="refine", help="memory namespace of the versions (default refine)")
    _common(refine, "outputs/refine", steps_alias=True)
    refine.set_defaults(func=cmd_refine)


def _text_of(args: argparse.Namespace, name: str) -> str:
    text = getattr(args, name) or getattr(args, f"{name}_flag")
    if not text or not text.strip():
        from seedx_agent.errors import InvalidPromptError

        example = _EXAMPLES.get(name, "a fox who learns to fly")
        raise InvalidPromptError(f'give the {name} as the first argument (in quotes), e.g. "{example}"')
    return check_text(text, f"the {name}")


def _check(args: argparse.Namespace) -> None:
    """The cheap arguments of a workflow command, checked before the model loads."""
    check_model(args.model)
    check_planner(args.planner)
    check_output_folder(args.out, "--out")
    if args.memory:
        check_output_folder(args.memory, "--memory")
    check_chroma(args.chroma)
    check_namespace(getattr(args, "namespace", None))


@contextmanager
def _open(args: argparse.Namespace) -> Iterator[tuple[Any, Any, Any, Path]]:
    """Engine, memory, planner and the output folder (created) for a workflow command (after ``_check``); the
    memory is closed when the block ends, however it ends."""
    from seedx_agent.graphs.runtime import default_planner, load_engine, load_planner, open_memory

    out = Path(args.out).expanduser()
    engine = load_engine(args.model)
    out.mkdir(parents=True, exist_ok=True)
    with open_memory(Path(args.memory) if args.memory else out / "memory", engine, chroma=args.chroma) as memory:
        yield engine, memory, load_planner(args.planner or default_planner(args.model), engine, memory), out


def _stream(graph: Any, inputs: dict[str, Any], bar: Any, progress: Callable[[dict[str, Any], Any], None]) -> Any:
    """Run ``graph`` on ``inputs``, showing its custom events on ``bar`` through ``progress``; the final state."""
    final: dict[str, Any] = {}
    for mode, chunk in graph.stream(inputs, stream_mode=["custom", "values"]):
        if mode == "values":
            final = chunk
        else:
            progress(chunk, bar)
    return final


def _story_progress(event: dict[str, Any], bar: Any) -> None:
    if event.get("event") == "story_step":
        bar.update(1)
        bar.set_postfix_str(event["text"][:40])


def _slides_progress(event: dict[str, Any], bar: Any) -> None:
    if event.get("event") == "slide_refine":  # one more picture than planned
        bar.total += 1
    if event.get("event") in ("slide_picture", "slide_refine"):
        bar.update(1)


def _refine_progress(event: dict[str, Any], bar: Any) -> None:
    if event.get("event", "").endswith("_end"):
        bar.update(1)
        bar.set_postfix_str(event["event"].removesuffix("_end"))


def cmd_story(args: argparse.Namespace) -> int:
    """Run the story graph; print the storyboard, manifest and the story's id as JSON."""
    premise = _text_of(args, "premise")
    _check(args)

    from tqdm import tqdm

    from seedx_agent.graphs.story import create_story_graph

    with _open(args) as (engine, memory, planner, out):
        graph = create_story_graph(
            engine,
            memory,
            planner=planner,
            steps=args.beats,
            out_dir=out,
            recall_k=args.recall,
            num_inference_steps=args.num_inference_steps,
        )
        with tqdm(total=args.beats, desc="story", unit="beat", disable=args.quiet) as bar:
            final = _stream(graph, {"premise": premise, "base_seed": args.seed}, bar, _story_progress)
    consistent = sum(1 for item in _beats(final) if item["consistent"] is not False)
    print(
        json.dumps(
            {
                "story_id": final["story_id"],
                "namespace": final["namespace"],
                "storyboard": final["storyboard"],
                "manifest": final["manifest"],
                "beats": args.beats,
                "consistent": consistent,
            }
        )
    )
    return 0


def _beats(final: dict[str, Any]) -> list[dict[str, Any]]:
    manifest = final.get("manifest")
    return json.loads(Path(manifest).read_text(encoding="utf-8"))["beats"] if manifest else []


def cmd_slides(args: argparse.Namespace) -> int:
    """Run the slides graph; print the deck and preview paths as JSON."""
    topic = _text_of(args, "topic")
    _check(args)

    from tqdm import tqdm

    from seedx_agent.graphs.slides import create_slides_graph

    with _open(args) as (engine, memory, planner, out):
        graph = create_slides_graph(
            engine,
            memory,
            planner=planner,
            out_dir=out,
            n_slides=args.slides,
            max_refine=args.max_refine,
            num_inference_steps=args.num_inference_steps,
        )
        with tqdm(total=args.slides, desc="slides", unit="picture", disable=args.quiet) as bar:
            final = _stream(graph, {"topic": topic, "base_seed": args.seed}, bar, _slides_progress)
    passed = sum(1 for slide in final["slides"] if slide["passed"])
    print(json.dumps({"pptx": final["pptx"], "previews": final["previews"], "passed": passed, "slides": args.slides}))
    return 0


def cmd_refine(args: argparse.Namespace) -> int:
    """Run the refine loop; write every version as PNG and report.json; exit 3 when never verified."""
    request = _text_of(args, "request")
    _check(args)

    from tqdm import tqdm

    from seedx_agent.graphs.refine import create_refine_graph

    with _open(args) as (engine, memory, planner, out):
        graph = create_refine_graph(
            engine,
            memory,
            planner=planner,
            max_rounds=args.rounds,
            namespace=args.namespace,
            num_inference_steps=args.num_inference_steps,
        )
        with tqdm(total=2 + 2 * args.rounds, desc="refine", unit="step", disable=args.quiet) as bar:
            final = _stream(graph, {"request": request, "seed": args.seed}, bar, _refine_progress)
        versions = []
        for index, version in enumerate(final["versions"]):
            name = f"{index:02d}_{version['operation']}_{version['image_id']}.png"
            with memory.load(version["image_id"]) as picture:
                picture.save(out / name)
            versions.append({**version, "file": name})
        report = {
            "request": request,
            "model": args.model,
            "planner": args.planner or "default",
            "prompt": final["prompt"],
            "checks": final["checks"],
            "verified": final["verified"],
            "rounds": final["round"],
            "final_image_id": final["image_id"],
            "best_image_id": final["best_image_id"],  # passed the most checks: the answer to use
            "lineage": [record.id for record in memory.lineage(final["image_id"])],
            "versions": versions,
            "verdicts": final["verdicts"],
        }
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if report["verified"]:
        print(f"verified after {report['rounds']} correction(s); {len(versions)} version(s) in {out}")
        return 0
    failed = [c["query"] for c in final["verdicts"][-1]["checks"] if not c["passed"]]
    print(
        f"NOT verified after {report['rounds']} correction(s): still failing {failed}; best version "
        f"{report['best_image_id']}; {len(versions)} version(s) and report.json in {out}"
    )
    return EXIT_NOT_VERIFIED
