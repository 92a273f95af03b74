"""``seedx-agent`` command line: the CPU demo, checkpoint conversion and model info.

The CLI sits on the top floor: it wires the other layers together and nothing imports it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

__all__ = ["main"]

logger = logging.getLogger("seedx_agent")

DESCRIPTION = (
    "SEED-X: comprehension, grounding, image generation and editing, the agent chat and its workflows. "
    "--model takes mini (the bundled trained miniature, the default), a random-weight preset such as "
    "tiny-random, or a checkpoint folder; --num-inference-steps sets the diffusion steps per picture (alias "
    "--steps in chat, refine, eval and demo; in story --steps is the old name of --beats). Log lines: warnings "
    "only unless -v."
)
# The tasks of ``seedx_agent.miniature.eval_model`` (EVAL_TASKS: the default; WORKFLOW_TASKS: slower, only when
# named), kept here so ``--help`` imports nothing heavy (tests/test_examples.py checks that the lists agree).
EVAL_TASKS = ("caption", "vqa", "grounding", "text_to_image", "edit", "reconstruction", "agent")
WORKFLOW_TASKS = ("refine", "story", "slides")


def _load_model(spec: str, *, variants: tuple[str, ...], allow_pickle: bool = False):
    """``mini`` (the bundled trained weights), a preset (random weights) or a folder: ``SeedX.from_pretrained``."""
    from seedx_agent.model import SeedX

    return SeedX.from_pretrained(spec, variants=variants, allow_pickle=allow_pickle)


def _demo_scene():
    from seedx_agent.miniature.world import Scene, Shape

    return Scene(
        shapes=(
            Shape("circle", "red", "large", (0, 0)),
            Shape("square", "blue", "large", (1, 2)),
        ),
        background="white",
    )


def cmd_demo(args: argparse.Namespace) -> int:
    """Describe, ground, generate and edit a world scene; write PNGs and a report."""
    from seedx_agent.cli.chat import check_model, check_output_folder
    from seedx_agent.miniature import world
    from seedx_agent.miniature.evaluate import score_edit, score_generation, score_grounding

    check_model(args.model)
    out = check_output_folder(args.out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = _load_model(args.model, variants=("seed-x-i", "seed-x-edit"))
    report: dict = {
        "model": args.model,
        "variants": list(model.variants),
        "load_s": round(time.perf_counter() - start, 2),
    }
    if args.model != "mini" and args.model in _presets():
        report["note"] = f"{args.model} has random weights: outputs exercise the pipeline, they are not meaningful"

    scene = _demo_scene()
    image = world.render(scene, 64)
    image.save(out / "input.png")
    t = time.perf_counter()
    answer = model.comprehend(image, world.CAPTION_QUESTION)
    report["describe"] = {"text": answer.text, "expected": world.describe(scene), "seconds": _since(t)}
    t = time.perf_counter()
    question = "what colour is the square?"
    answer = model.comprehend(image, question)
    report["vqa"] = {"question": question, "text": answer.text, "expected": "blue", "seconds": _since(t)}
    t = time.perf_counter()
    grounding = model.ground(image, "the red circle")
    target = world.object_box(scene.shapes[0], 64)
    report["ground"] = {
        "phrase": "the red circle",
        "boxes": [[round(v, 1) for v in b.as_tuple()] for b in grounding.boxes],
        "expected": list(target),
        "iou": round(score_grounding(grounding.box, target)["iou"], 3),
        "seconds": _since(t),
    }
    t = time.perf_counter()
    prompt = "a green triangle at the bottom left"
    steps = args.num_inference_steps
    generated = model.generate_image(prompt, seed=args.seed, num_inference_steps=steps, progress=not args.quiet)
    generated.image.save(out / "generated.png")
    wanted = world.Scene(shapes=(world.Shape("triangle", "green", "large", (2, 0)),), background="white")
    report["generate_image"] = {
        "prompt": prompt,
        "file": "generated.png",
        "correct": score_generation(generated.image, wanted)["all_ok"],
        "seconds": _since(t),
    }
    t = time.perf_counter()
    instruction = "make the red circle yellow"
    edited = model.edit_image(image, instruction, seed=args.seed, num_inference_steps=steps, progress=not args.quiet)
    edited.image.save(out / "edited.png")
    target_scene = scene.replace_shape(0, world.Shape("circle", "yellow", "large", (0, 0)))
    report["edit_image"] = {
        "instruction": instruction,
        "file": "edited.png",
        "correct": score_edit(edited.image, scene, target_scene)["all_ok"],
        "seconds": _since(t),
    }
    report["total_s"] = _since(start)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 2)


def _presets() -> dict:
    from seedx_agent.config import PRESETS

    return PRESETS


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) a recipe; ``mini`` runs every stage of the miniature and assembles the model."""
    from seedx_agent.cli.chat import check_output_folder
    from seedx_agent.config import SeedXConfig
    from seedx_agent.errors import ConfigError
    from seedx_agent.miniature.recipe import MINI_STAGES, MiniSchedule, assemble_mini, run_mini
    from seedx_agent.training.loop import distributed_context

    if args.recipe != "mini":
        raise SystemExit("only the 'mini' recipe runs from the CLI so far; use seedx_agent.training.recipes in Python")
    check_output_folder(args.out, "--out")
    schedule = MiniSchedule()
    if args.scale != 1.0:
        schedule = schedule.scaled(args.scale)
    if args.stage_steps:
        schedule = schedule.with_steps(_stage_steps(args.stage_steps))
    if args.vit_local_heads:
        schedule = replace(schedule, vit_local_heads=True)
    stages = tuple(args.stages) if args.stages else MINI_STAGES
    config = SeedXConfig.from_preset("mini")
    if args.rec_loss_scale is not None:
        try:
            config = config.with_rec_loss_scale(args.rec_loss_scale)
        except ConfigError as error:
            raise SystemExit(f"--rec-loss-scale must be >= 0 ({error})") from error
    start = time.perf_counter()
    report = run_mini(
        args.out,
        schedule=schedule,
        stages=stages,
        max_minutes=args.max_minutes,
        threads=args.threads,
        config=config,
        progress=not args.quiet,
    )
    if not distributed_context().is_main:  # data-parallel run: the first process reports and assembles
        return 0
    print(json.dumps(report, indent=2, default=str))
    if not all(s.get("finished") for s in report["stages"].values()):
        print(f"stopped after {_since(start)} s; run the same command again to resume")
        return 0
    try:  # the requested stages are done; the model needs every stage (others may run in another process)
        folder = assemble_mini(args.out, Path(args.out) / "model", schedule=schedule, config=config)
    except ConfigError as error:
        print(f"requested stages finished after {_since(start)} s; the model is assembled once all are: {error}")
        return 0
    print(f"model written to {folder} ({_since(start)} s this call)")
    return 0


def _stage_steps(items: list[str]) -> dict[str, int]:
    """``["lvlm-sft=1000", ...]`` -> ``{"lvlm-sft": 1000}``, with a usage error on malformed items."""
    steps: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise SystemExit(f"--stage-steps takes STAGE=STEPS items (e.g. lvlm-sft=1000), got {item!r}")
        steps[name.strip()] = int(value)
    return steps


def cmd_eval(args: argparse.Namespace) -> int:
    """Score a model on held-out world samples and print the table against the bars."""
    from seedx_agent.cli.chat import check_file_folder, check_model

    if args.what != "mini":
        raise SystemExit("only 'seedx-agent eval mini' exists: it scores a model on the miniature world")
    check_model(args.model)
    if args.json:
        check_file_folder(args.json, "--json")

    from seedx_agent.miniature.eval_model import evaluate_model

    model = _load_model(args.model, variants=("seed-x-i", "seed-x-edit"))
    start = time.perf_counter()
    report = evaluate_model(
        model,
        n=args.n,
        seed=args.seed,
        tasks=tuple(args.tasks) if args.tasks else EVAL_TASKS,
        num_inference_steps=args.num_inference_steps,
        scheduler=args.scheduler,
        progress=not args.quiet,
        copy_arguments=not args.no_copy_arguments,
    )
    print(report.format_table())
    print(f"{args.n} held-out samples per task, seed {args.seed}, {_since(start)} s")
    if args.json:
        path = Path(args.json).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0 if report.passed() or not args.strict else 1


def cmd_convert(args: argparse.Namespace) -> int:
    """Official release folder -> our safetensors layout with a config.json."""
    from seedx_agent.cli.chat import check_output_folder
    from seedx_agent.errors import ConfigError

    if not Path(args.source).is_dir():
        raise ConfigError(f"source {args.source!r} is not a folder: pass the official release folder (SEED-X-17B)")
    check_output_folder(args.out, "out")

    from seedx_agent.config import SeedXConfig
    from seedx_agent.weights import convert_official

    start = time.perf_counter()
    convert_official(
        Path(args.source),
        Path(args.out),
        variants=tuple(args.variants),
        stages=tuple(args.stages) or None,
        allow_pickle=args.allow_pickle,
        vit_path=args.vit,
        sdxl_path=args.sdxl,
        config=SeedXConfig.from_preset(args.preset) if args.preset else None,
    )
    print(f"converted {args.source} -> {args.out} in {time.perf_counter() - start:.1f}s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print the components and parameter counts of a model."""
    from seedx_agent.cli.chat import check_model

    check_model(args.model)
    model = _load_model(args.model, variants=tuple(args.variants), allow_pickle=args.allow_pickle)
    info = {name: sum(p.numel() for p in module.parameters()) for name, module in model.parts.modules()}
    print(json.dumps({"config": model.config.name, "parameters": info}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from seedx_agent.cli.chat import MODEL_HELP, add_steps_flag, add_verbosity_flag, positive_int

    parser = argparse.ArgumentParser(prog="seedx-agent", description=DESCRIPTION)
    add_verbosity_flag(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run comprehension, grounding, generation and editing once")
    demo.add_argument("--model", default="mini", help=MODEL_HELP)
    demo.add_argument("--out", default="outputs/demo", help="folder for PNGs and report.json (default outputs/demo)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated and the edited picture (default 0)")
    add_steps_flag(demo)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)

    convert = sub.add_parser("convert", help="convert the official release to our safetensors layout")
    convert.add_argument("source", help="folder of the official release (SEED-X-17B layout)")
    convert.add_argument("out", help="output folder")
    convert.add_argument(
        "--variants",
        nargs="+",
        default=["seed-x-i"],
        choices=["seed-x", "seed-x-i", "seed-x-edit"],
        help="LLM variants to convert (default seed-x-i)",
    )
    convert.add_argument(
        "--stages", nargs="*", type=int, default=[], choices=[1, 2], help="de-tokenizer stages (default: all found)"
    )
    convert.add_argument("--vit", default=None, help="path of qwen_vit_G.pt (default: SOURCE/QwenViT/qwen_vit_G.pt)")
    convert.add_argument("--sdxl", default=None, help="SDXL-base folder (default: SOURCE/stable-diffusion-xl-base-1.0)")
    convert.add_argument(
        "--preset", default=None, help="geometry of the checkpoint (default: the official preset of the first variant)"
    )
    convert.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read the official pickle .bin/.pt files (torch.load weights_only=True)",
    )
    convert.set_defaults(func=cmd_convert)

    train = sub.add_parser("train", help="train (or resume) a recipe: 'mini' trains the miniature from scratch")
    train.add_argument("recipe", choices=["mini"], help="the recipe to run (only mini from the CLI)")
    train.add_argument("--out", default="runs/mini", help="run folder (checkpoints per stage, then model/)")
    train.add_argument("--stages", nargs="*", default=None, help="subset of stages to run (default: all, in order)")
    train.add_argument("--max-minutes", type=float, default=None, help="stop cleanly after this long; rerun to resume")
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    train.add_argument("--scale", type=float, default=1.0, help="multiply every stage's steps (smoke runs)")
    train.add_argument(
        "--stage-steps",
        nargs="*",
        default=[],
        metavar="STAGE=STEPS",
        help="override stages' total training steps (after --scale); a finished stage resumes and continues",
    )
    train.add_argument(
        "--vit-local-heads",
        action="store_true",
        help="train the ViT with the shared per-cell head on its raw tokens as well (ViTWorldHeads)",
    )
    train.add_argument(
        "--rec-loss-scale",
        type=float,
        default=None,
        help="weight of the LLM's regression loss (mini preset: 1.0; the bundled weights were trained with 6.0)",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("eval", help="score a model on held-out miniature-world samples")
    evaluate.add_argument("what", choices=["mini"], help="the benchmark (only mini: the miniature world)")
    evaluate.add_argument("--model", default="mini", help=MODEL_HELP)
    evaluate.add_argument("--n", type=positive_int, default=50, help="held-out samples per task (default 50)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the held-out samples (default 0)")
    evaluate.add_argument(
        "--tasks",
        nargs="*",
        default=None,
        choices=EVAL_TASKS + WORKFLOW_TASKS,
        metavar="TASK",
        help=f"tasks to score: any of {', '.join(EVAL_TASKS)} (default: these), and the slower workflows "
        f"{', '.join(WORKFLOW_TASKS)} (only when named)",
    )
    add_steps_flag(evaluate)
    evaluate.add_argument(
        "--scheduler", default="euler", choices=["euler", "dpm"], help="diffusion sampler (default euler)"
    )
    evaluate.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    evaluate.add_argument("--strict", action="store_true", help="exit 1 when a bar is missed")
    evaluate.add_argument(
        "--no-copy-arguments",
        action="store_true",
        help="agent task: decode tool calls without the copy constraint (seedx_agent.protocol.copy_arguments)",
    )
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(func=cmd_eval)

    # The agent commands live with the graphs (the CLI is the top floor; nothing below imports it).
    from seedx_agent.cli.chat import register as register_agent_commands
    from seedx_agent.cli.story import register as register_story_commands

    register_agent_commands(sub)
    register_story_commands(sub)
    from seedx_agent.cli.serve import register as register_serve_command  # FastAPI only when it runs

    register_serve_command(sub)
    from seedx_agent.cli.ui import register as register_ui_command  # Gradio only when it runs

    register_ui_command(sub)

    info = sub.add_parser("info", help="print components and parameter counts")
    info.add_argument("--model", default="mini", help=MODEL_HELP)
    info.add_argument(
        "--variants",
        nargs="+",
        default=["seed-x-i"],
        choices=["seed-x", "seed-x-i", "seed-x-edit"],
        help="LLM variants to load (default seed-x-i)",
    )
    info.add_argument("--allow-pickle", action="store_true", help="read pickle .bin/.pt files of an official folder")
    info.set_defaults(func=cmd_info)
    _add_verbosity_everywhere(sub, add_verbosity_flag)
    return parser


def _add_verbosity_everywhere(sub: argparse._SubParsersAction, add: Any) -> None:
    """``-v`` after a sub-command's name too (``seedx-agent chat -v``), down to nested sub-commands."""
    for parser in sub.choices.values():
        add(parser)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_verbosity_everywhere(action, add)


def main(argv: list[str] | None = None) -> int:
    """Parse, set up logging (warnings only; ``-v`` info, ``-vv`` debug) and run the sub-command; a library or
    file-system error is one ``error: ...`` line on stderr and exit code 2."""
    from seedx_agent.cli.chat import run_command, setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
