"""``register`` adds working ``story``, ``slides`` and ``refine`` subcommands (run on tiny-random in-process)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from pptx import Presentation

from seedx_agent.cli.story import register


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="seedx-agent")
    register(main.add_subparsers(dest="command", required=True))
    return main


def test_defaults_and_positional_text() -> None:
    args = parser().parse_args(["story", "a fox who learns to fly"])
    assert (args.premise, args.beats, args.model, args.memory, args.seed, args.planner) == (
        "a fox who learns to fly",
        25,
        "mini",
        None,
        0,
        None,
    )
    assert parser().parse_args(["story", "--premise", "a red circle", "--beats", "3"]).premise_flag == "a red circle"
    args = parser().parse_args(["story", "x", "--steps", "12"])  # --steps is the old name of --beats in story
    assert (args.beats, args.num_inference_steps) == (12, None)
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


def test_diffusion_steps_are_num_inference_steps_everywhere() -> None:
    """``--num-inference-steps`` in every workflow; ``--steps`` is its alias in refine, the beats in story, and
    not a flag of slides (where it would be ambiguous)."""
    for command in (["story", "x"], ["slides", "x"], ["refine", "x"]):
        assert parser().parse_args([*command, "--num-inference-steps", "3"]).num_inference_steps == 3
    assert parser().parse_args(["refine", "x", "--steps", "4"]).num_inference_steps == 4
    story = parser().parse_args(["story", "x", "--steps", "4", "--num-inference-steps", "2"])
    assert (story.beats, story.num_inference_steps) == (4, 2)
    with pytest.raises(SystemExit):
        parser().parse_args(["slides", "x", "--steps", "4"])
    story_help = " ".join(parser()._subparsers._group_actions[0].choices["story"].format_help().split())
    assert "--beats N, --steps N" in story_help and "diffusion steps are --num-inference-steps" in story_help


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["story", "x", "--out", "{file}/below"], "--out '{file}/below' cannot be created: '{file}' is a file"),
        (["slides", "x", "--out", "{file}"], "--out '{file}' is a file, not a folder"),
        (["refine", "x", "--model", "{tmp}/no-such-model"], "'mini' (the bundled trained miniature)"),
        (["refine", "x", "--planner", "no_such_module_here:make"], "no importable module 'no_such_module_here'"),
        (["refine", "x", "--namespace", "bad ns "], "--namespace 'bad ns ' is malformed"),
        (["story", "  "], "give the premise as the first argument"),
        (["slides", "x", "--chroma", "chroma.internal"], "chroma server address 'chroma.internal' is not HOST:PORT"),
    ],
)
def test_bad_arguments_fail_before_the_model_loads(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seedx_agent.errors import SeedXError

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model must not load before the arguments are checked")

    monkeypatch.setattr("seedx_agent.graphs.runtime.load_engine", no_loading)
    (tmp_path / "file").write_text("x")
    values = {"file": str(tmp_path / "file"), "tmp": str(tmp_path)}
    argv = [item.format(**values) for item in argv]
    args = parser().parse_args([*argv, "--memory", str(tmp_path / "memory")])
    with pytest.raises(SeedXError) as raised:
        args.func(args)
    assert message.format(**values) in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "memory").exists()  # nothing created on the way
