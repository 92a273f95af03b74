"""``register`` adds working ``story`` and ``slides`` subcommands (run on tiny-random in-process)."""

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


def test_defaults() -> None:
    args = parser().parse_args(["story", "--premise", "a red circle"])
    assert (args.steps, args.model, args.memory, args.seed) == (25, "mini", None, 0)
    args = parser().parse_args(["slides", "--topic", "shapes"])
    assert (args.slides, args.model, args.out, args.max_refine) == (4, "mini", "outputs/slides", 2)
    with pytest.raises(SystemExit):
        parser().parse_args(["story", "--premise", "x", "--steps", "0"])


def test_story_and_slides_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--model", "tiny-random", "--num-inference-steps", "2", "--quiet"]
    args = parser().parse_args(
        ["story", "--premise", "a red circle", "--steps", "2", "--out", str(tmp_path / "s"), *common]
    )
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(report["storyboard"]).read_text().count("<figure>") == 2
    assert (tmp_path / "s" / "memory").is_dir()  # memory defaults to OUT/memory

    memory = tmp_path / "shared-memory"
    argv = ["slides", "--topic", "blue squares", "--slides", "2", "--max-refine", "0", "--out", str(tmp_path / "d")]
    args = parser().parse_args([*argv, "--memory", str(memory), *common])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(Presentation(report["pptx"]).slides) == 2 and len(report["previews"]) == 2
    assert memory.is_dir()
