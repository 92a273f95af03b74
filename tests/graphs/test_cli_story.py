"""``register`` adds working ``story``, ``slides`` and ``refine`` subcommands (run on tiny-random in-process)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from pptx import Presentation
from seedx_agent.graphs.cli_story import register


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="seedx-agent")
    register(main.add_subparsers(dest="command", required=True))
    return main


def test_defaults_and_positional_text() -> None:
    args = parser().parse_args(["story", "a fox who learns to fly"])
    assert (args.premise, args.steps, args.model, args.memory, args.seed, args.planner) == (
        "a fox who learns to fly",
        25,
        "mini",
        None,
        0,
        None,
    )
    assert parser().parse_args(["story", "--premise", "a red circle", "--beats", "3"]).premise_flag == "a red circle"
    assert parser().parse_args(["story", "x", "--steps", "12"]).steps == 12  # --steps is the old name of --beats
    args = parser().parse_args(["slides", "shapes"])
    assert (args.slides, args.model, args.out, args.max_refine) == (4, "mini", "outputs/slides", 2)
    args = parser().parse_args(["refine", "a lighthouse at dusk", "--planner", "my.module:planner"])
    assert (args.request, args.rounds, args.planner) == ("a lighthouse at dusk", 3, "my.module:planner")
    for bad in (["story", "x", "--steps", "0"], ["refine", "x", "--rounds", "-1"], ["slides", "x", "--seed", "s"]):
        with pytest.raises(SystemExit):
            parser().parse_args(bad)


def test_story_and_slides_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--model", "tiny-random", "--num-inference-steps", "2", "--quiet"]
    args = parser().parse_args(["story", "a small red circle", "--beats", "2", "--out", str(tmp_path / "s"), *common])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(report["storyboard"]).read_text().count("<figure>") == 2
    assert len(json.loads(Path(report["manifest"]).read_text())["beats"]) == 2
    assert (tmp_path / "s" / "memory").is_dir()  # memory defaults to OUT/memory

    memory = tmp_path / "shared-memory"
    argv = ["slides", "blue squares", "--slides", "2", "--max-refine", "0", "--out", str(tmp_path / "d")]
    args = parser().parse_args([*argv, "--memory", str(memory), *common])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(Presentation(report["pptx"]).slides) == 2 and len(report["previews"]) == 2
    assert memory.is_dir()


def test_planner_choice_reaches_the_workflow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--planner module:attr`` loads any importable planner; a bad spec is a typed error before any work."""
    from seedx_agent.errors import ConfigError

    common = ["--model", "tiny-random", "--num-inference-steps", "1", "--quiet", "--out", str(tmp_path / "r")]
    args = parser().parse_args(["refine", "a blue square", "--rounds", "0", "--planner", "nowhere:thing", *common])
    with pytest.raises(ConfigError, match="nowhere:thing"):
        args.func(args)
    spec = "seedx_agent.miniature.planners:WorldPlanner"
    args = parser().parse_args(["refine", "a blue square", "--rounds", "0", "--planner", spec, *common])
    assert args.func(args) == 3  # random weights: planned, drawn, checked, not verified; the exit code says so
    assert "NOT verified" in capsys.readouterr().out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["planner"] == spec and report["checks"][0]["query"] == "what shape is blue?"
