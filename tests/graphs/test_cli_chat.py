"""``chat``, ``refine`` and ``memory`` subcommands, run through a parser built with ``register`` (tiny-random)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from PIL import Image
from seedx_agent.graphs.cli_chat import register

from seedx_agent.errors import SeedXError


def main(argv: list[str]) -> int:
    """What the main CLI does with ``register``: parse, run, turn library errors into exit code 2."""
    parser = argparse.ArgumentParser(prog="test")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SeedXError as error:
        print(f"error: {error}")
        return 2


@pytest.fixture(scope="module")
def refined(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    memory, out = root / "memory", root / "refine"
    argv = ["refine", "--model", "tiny-random", "--memory", str(memory), "--out", str(out)]
    argv += ["--prompt", "a blue square in the center", "--rounds", "1", "--steps", "1", "--seed", "2", "--quiet"]
    assert main(argv) == 0
    return memory, out


def test_refine_writes_every_version_and_a_report(refined: tuple[Path, Path]) -> None:
    _, out = refined
    report = json.loads((out / "report.json").read_text())
    assert report["request"] == "a blue square in the center" and report["model"] == "tiny-random"
    assert report["objects"] == [{"colour": "blue", "kind": "square", "position": "center"}]
    assert report["rounds"] == 1 and report["verified"] is False
    assert [v["operation"] for v in report["versions"]] == ["generate", "edit"]
    assert report["lineage"] == [v["image_id"] for v in report["versions"]]
    assert report["versions"][1]["instruction"] == report["verdicts"][0]["instruction"]
    for version in report["versions"]:
        with Image.open(out / version["file"]) as image:
            assert image.size[0] > 0


def test_memory_list_search_show_export_delete(
    refined: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    memory, out = refined
    generated_id, edited_id = json.loads((out / "report.json").read_text())["lineage"]
    base = ["memory", "--memory", str(memory)]
    capsys.readouterr()

    assert main([*base, "list", "--namespace", "refine"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [generated_id, edited_id]
    assert f"<- {generated_id} (edit)" in lines[1]

    assert main([*base, "search", "a blue square in the center", "--k", "1"]) == 0
    assert generated_id in capsys.readouterr().out

    assert main([*base, "show", edited_id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["lineage"] == [generated_id, edited_id] and shown["record"]["operation"] == "edit"

    assert main([*base, "export", generated_id, edited_id, "--out", str(tmp_path / "export")]) == 0
    exported = sorted(path.name for path in (tmp_path / "export").iterdir())
    assert exported == sorted([f"{generated_id}.json", f"{generated_id}.png", f"{edited_id}.json", f"{edited_id}.png"])

    assert main([*base, "delete", edited_id]) == 0
    assert main([*base, "show", edited_id]) == 2
    assert "no image with id" in capsys.readouterr().out
    assert main(["memory", "--memory", str(tmp_path / "nowhere"), "list"]) == 2


def test_chat_script_with_review(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Image.new("RGB", (40, 40), (200, 20, 20)).save(tmp_path / "red.png")
    plan = [
        {"tool_calls": [{"name": "ground", "args": {"image_id": "$last_image_id", "phrase": "the red square"}}]},
        {"tool_calls": [{"name": "edit_image", "args": {"image_id": "$last_image_id", "instruction": "make it blue"}}]},
        {"content": "Left it as it was."},
    ]
    script = [f"/add {tmp_path / 'red.png'}", "find the square and make it blue", "/reject keep it red"]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    (tmp_path / "script.json").write_text(json.dumps(script))
    argv = ["chat", "--model", "tiny-random", "--memory", str(tmp_path / "memory"), "--out", str(tmp_path / "out")]
    argv += ["--planner-script", str(tmp_path / "plan.json"), "--script", str(tmp_path / "script.json")]
    argv += ["--approve-edits", "--steps", "1", "--quiet", "--checkpoints", str(tmp_path / "threads.sqlite")]
    assert main(argv) == 0

    stdout = capsys.readouterr().out
    input_id = stdout.split("stored ")[1].split()[0]
    assert "review> edit_image" in stdout and "assistant> Left it as it was." in stdout
    transcript = json.loads((tmp_path / "out" / "transcript.json").read_text())
    assert [entry["role"] for entry in transcript] == ["human", "ai", "tool", "ai", "tool", "ai"]
    assert f"(attached images: {input_id})" in transcript[0]["content"]
    assert transcript[1]["tool_calls"][0]["args"]["image_id"] == input_id
    assert transcript[4]["status"] == "error" and "keep it red" in transcript[4]["content"]
    assert (tmp_path / "out" / f"{input_id}.png").is_file()
    assert (tmp_path / "threads.sqlite").is_file()


def test_chat_script_must_answer_a_pending_review(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Image.new("RGB", (40, 40), "white").save(tmp_path / "white.png")
    plan = [{"tool_calls": [{"name": "edit_image", "args": {"image_id": "$last_image_id", "instruction": "x"}}]}]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    (tmp_path / "script.json").write_text(json.dumps([f"/add {tmp_path / 'white.png'}", "edit it"]))
    argv = ["chat", "--model", "tiny-random", "--memory", str(tmp_path / "memory"), "--approve-edits", "--quiet"]
    argv += ["--planner-script", str(tmp_path / "plan.json"), "--script", str(tmp_path / "script.json")]
    assert main(argv) == 2
    assert "waiting for review" in capsys.readouterr().out
