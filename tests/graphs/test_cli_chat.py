"""``chat``, ``refine`` and ``memory`` subcommands, run through a parser built with the ``register`` functions
(tiny-random)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from PIL import Image

from seedx_agent.cli.chat import register
from seedx_agent.cli.story import EXIT_NOT_VERIFIED
from seedx_agent.cli.story import register as register_workflows
from seedx_agent.errors import SeedXError
from seedx_agent.protocol.tool_calls import IMAGE_ID_RE


def main(argv: list[str]) -> int:
    """What the main CLI does with ``register``: parse, run, turn library errors into exit code 2."""
    parser = argparse.ArgumentParser(prog="test")
    commands = parser.add_subparsers(dest="command", required=True)
    register(commands)
    register_workflows(commands)
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
    argv = [
        "refine",
        "a blue square in the center",
        "--model",
        "tiny-random",
        "--memory",
        str(memory),
        "--out",
        str(out),
    ]
    argv += ["--rounds", "1", "--num-inference-steps", "1", "--seed", "2", "--quiet"]
    assert main(argv) == EXIT_NOT_VERIFIED  # random weights never pass the checks: the exit code says so
    return memory, out


def test_refine_writes_every_version_and_a_report(refined: tuple[Path, Path]) -> None:
    _, out = refined
    report = json.loads((out / "report.json").read_text())
    assert report["request"] == "a blue square in the center" and report["model"] == "tiny-random"
    assert report["prompt"] == "a blue square in the center"  # tiny-random plans with the world plug-in
    assert [c["query"] for c in report["checks"]] == [
        "what shape is blue?",
        "what colour is the square?",
        "the blue square",
    ]
    assert report["rounds"] == 1 and report["verified"] is False
    assert [v["operation"] for v in report["versions"]] == ["generate", "edit"]
    assert report["lineage"] == [v["image_id"] for v in report["versions"]]
    assert report["versions"][1]["instruction"] == "add a blue square in the center"
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


def _chat(tmp_path: Path, plan: list[dict], script: list[str] | None, *extra: str) -> int:
    """Run ``chat`` on tiny-random with a scripted planner (and a script of user inputs unless ``script`` is None)."""
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    argv = ["chat", "--model", "tiny-random", "--memory", str(tmp_path / "memory"), "--steps", "1"]
    argv += ["--planner-script", str(tmp_path / "plan.json"), *extra]
    if script is not None:
        (tmp_path / "script.json").write_text(json.dumps(script))
        argv += ["--script", str(tmp_path / "script.json")]
    return main(argv)


def _generate(prompt: str, seed: int) -> dict:
    return {"tool_calls": [{"name": "generate_image", "args": {"prompt": prompt, "seed": seed}}]}


def _pictures(stdout: str) -> list[tuple[str, str, str]]:
    """(path, id, handle) of every 'picture: PATH (img_..., #N)' line."""
    found = []
    for line in stdout.splitlines():
        if line.startswith("picture: "):
            path, _, rest = line.removeprefix("picture: ").partition(" (")
            image_id, _, handle = rest.removesuffix(")").partition(", ")
            found.append((path, image_id, handle))
    return found


def test_chat_handle_in_a_later_message_names_the_earlier_picture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Turn 1 draws two pictures (#1, #2); turn 2 says "#1". The planner edits "$last_image_id", the newest id
    # in the conversation: the handle must have become #1's id in the message, or it would be #2's.
    plan = [
        _generate("a red circle", 3),
        _generate("a blue square", 4),
        {"content": "Two pictures."},
        {"tool_calls": [{"name": "edit_image", "args": {"image_id": "$last_image_id", "instruction": "make it blue"}}]},
        {"content": "Edited."},
    ]
    out = tmp_path / "out"
    script = ["draw a red circle and a blue square", "make #1 blue"]
    assert _chat(tmp_path, plan, script, "--out", str(out), "--quiet") == 0

    pictures = _pictures(capsys.readouterr().out)
    (_, circle, first), (_, square, second), (_, edited, third) = pictures
    assert (first, second, third) == ("#1", "#2", "#3")
    transcript = json.loads((out / "transcript.json").read_text())
    assert transcript[6]["content"] == f"make {circle} blue"
    edit_call, edit_result = transcript[7]["tool_calls"][0], transcript[8]
    assert edit_call["args"]["image_id"] == circle != square
    assert edit_result["status"] == "success" and edit_result["artifact"]["parent_id"] == circle
    assert edit_result["artifact"]["image_id"] == edited


def test_chat_handles_in_tool_calls_resolve_in_later_turns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The planner itself writes handles (as ChatSeedX's small model does) for pictures of earlier turns.
    plan = [
        _generate("a red circle", 3),
        {"content": "A circle."},
        _generate("a green square", 4),
        {"content": "A square."},
        {"tool_calls": [{"name": "edit_image", "args": {"image_id": "#1", "instruction": "make it blue"}}]},
        {"tool_calls": [{"name": "comprehend", "args": {"image_ids": ["#2", "#3"], "question": "same?"}}]},
        {"content": "Done."},
    ]
    out = tmp_path / "out"
    script = ["draw a red circle", "draw a green square", "make the circle blue, then compare"]
    assert _chat(tmp_path, plan, script, "--out", str(out), "--quiet") == 0

    (_, circle, _), (_, square, _), (_, edited, handle) = _pictures(capsys.readouterr().out)
    assert handle == "#3"
    transcript = json.loads((out / "transcript.json").read_text())
    edit, compare = [entry for entry in transcript if entry["role"] == "tool"][2:]
    assert edit["status"] == "success" and edit["artifact"]["parent_id"] == circle
    assert compare["status"] == "success" and compare["artifact"]["image_ids"] == [square, edited]
    calls = [entry["tool_calls"][0] for entry in transcript if entry.get("tool_calls")]
    assert calls[2]["args"]["image_id"] == circle and calls[3]["args"]["image_ids"] == [square, edited]


def test_chat_handles_survive_a_continued_thread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the first run has no --out: its picture goes to outputs/chat here
    threads = ["--checkpoints", str(tmp_path / "threads.sqlite"), "--thread", "t1", "--quiet"]
    assert _chat(tmp_path, [_generate("a red circle", 3), {"content": "A circle."}], ["draw"], *threads) == 0
    ((_, circle, handle),) = _pictures(capsys.readouterr().out)
    assert handle == "#1"
    plan = [
        {"tool_calls": [{"name": "edit_image", "args": {"image_id": "#1", "instruction": "make it blue"}}]},
        {"content": "Edited."},
    ]
    out = tmp_path / "out"
    assert _chat(tmp_path, plan, ["make #1 blue"], *threads, "--out", str(out)) == 0
    ((_, edited, handle),) = _pictures(capsys.readouterr().out)
    assert handle == "#2"
    transcript = json.loads((out / "transcript.json").read_text())
    assert transcript[4]["content"] == f"make {circle} blue"
    assert transcript[-2]["artifact"]["parent_id"] == circle and transcript[-2]["artifact"]["image_id"] == edited


def test_interactive_chat_saves_and_names_new_pictures_and_prints_short_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = [
        _generate("a red circle", 12),
        {"content": "Here it is."},
        {"tool_calls": [{"name": "edit_image", "args": {"image_id": "#1", "instruction": "blue", "seed": 5}}]},
        {"content": "Edited."},
    ]
    lines = iter(["draw a red circle", "make #1 blue", "/approve"])

    def fake_input(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    monkeypatch.chdir(tmp_path)
    assert _chat(tmp_path, plan, None) == 0  # no --out, no --quiet; '/approve' with nothing pending is only reported

    captured = capsys.readouterr()
    (path_1, circle, handle_1), (path_2, edited, handle_2) = _pictures(captured.out)
    assert (path_1, handle_1) == (f"outputs/chat/{circle}.png", "#1")
    assert (path_2, handle_2) == (f"outputs/chat/{edited}.png", "#2")
    for path in (path_1, path_2):
        with Image.open(tmp_path / path) as image:
            assert image.format == "PNG"
    assert "assistant> Here it is." in captured.out and "assistant> Edited." in captured.out

    progress = captured.err.splitlines()
    assert f"  [generate_image] done: {circle} (seed 12, " in "\n".join(progress)
    assert f"  [edit_image] done: {edited} from {circle} (seed 5, " in "\n".join(progress)
    assert "  [planner] calls generate_image (" in "\n".join(progress)
    assert "  [edit_image] running" in progress and "  [planner] thinking" in progress
    assert "error: '/approve': no edit is waiting for review" in progress
    assert not [line for line in progress if "tool_call_id" in line or "{" in line]


def test_chat_quiet_prints_no_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the picture goes to outputs/chat here
    assert _chat(tmp_path, [_generate("a red circle", 1), {"content": "ok"}], ["draw"], "--quiet") == 0
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("  [")]


def test_chat_script_failing_later_still_writes_the_finished_turns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.new("RGB", (40, 40), "red").save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    script = ["draw a red circle", f"/add {tmp_path / 'truncated.png'}", "make it blue"]
    assert _chat(tmp_path, [_generate("a red circle", 1), {"content": "ok"}], script, "--out", str(out), "--quiet") == 2

    stdout = capsys.readouterr().out
    ((_, circle, _),) = _pictures(stdout)
    errors = [line for line in stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: chat script item 1 ('/add ")
    assert "cannot be decoded" in errors[0]
    transcript = json.loads((out / "transcript.json").read_text())
    assert [entry["role"] for entry in transcript] == ["human", "ai", "tool", "ai"]
    assert (out / f"{circle}.png").is_file()


def _no_loading(*args: object, **kwargs: object) -> None:
    raise AssertionError("the model must not load before the arguments are checked")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--namespace", "bad ns "], "error: --namespace 'bad ns ' is malformed"),
        (["--out", "{file}"], "error: --out '{file}' is a file, not a folder"),
        (
            ["--checkpoints", "{file}/threads.sqlite"],
            "error: --checkpoints '{file}/threads.sqlite': its folder '{file}' is a file, not a folder",
        ),
        (["--script", "{tmp}/missing.json"], "error: chat script '{tmp}/missing.json' is not a readable JSON file"),
        (["--model", "{tmp}/no-model"], "error: --model '{tmp}/no-model' does not exist: pass an existing checkpoint"),
        (["--chroma", "localhost"], "error: chroma server address 'localhost' is not HOST:PORT"),
    ],
)
def test_chat_checks_its_arguments_before_loading_the_model(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("seedx_agent.graphs.runtime.load_engine", _no_loading)
    (tmp_path / "file").write_text("x")
    values = {"file": str(tmp_path / "file"), "tmp": str(tmp_path)}
    argv = ["chat", "--memory", str(tmp_path / "memory"), *(item.format(**values) for item in extra)]
    assert main(argv) == 2
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(message.format(**values))
    assert not (tmp_path / "memory").exists()


def test_memory_checks_arguments_before_opening(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The memory folder does not even exist: the bad argument is reported first.
    base = ["memory", "--memory", str(tmp_path / "nowhere")]
    assert main([*base, "export", "img_0123456789abcdef", "--out", "/proc/nope"]) == 2
    assert (
        capsys.readouterr().out.strip()
        == "error: --out '/proc/nope' cannot be created as a folder: No such file or directory"
    )
    assert main([*base, "list", "--namespace", "a//b"]) == 2
    assert "--namespace 'a//b' is malformed" in capsys.readouterr().out
    assert main([*base, "search", "a \ud800 b"]) == 2
    assert "the query holds characters that are not valid UTF-8" in capsys.readouterr().out
    assert main([*base, "show", "../etc/passwd"]) == 2
    assert "is not an image id" in capsys.readouterr().out


def test_check_output_folder_leaves_nothing_behind(tmp_path: Path) -> None:
    from seedx_agent.cli.chat import check_file_folder, check_output_folder
    from seedx_agent.errors import ConfigError

    assert check_output_folder(tmp_path / "a" / "b" / "c", "--out") == tmp_path / "a" / "b" / "c"
    assert list(tmp_path.iterdir()) == []  # creatable, and not created
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_output_folder(tmp_path / "f" / "x", "--out")
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        check_file_folder(tmp_path, "--json")
    assert check_file_folder(tmp_path / "new" / "r.json", "--json") == tmp_path / "new" / "r.json"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["f"]


def test_steps_is_the_alias_of_num_inference_steps_in_chat() -> None:
    parser = argparse.ArgumentParser(prog="test")
    register(parser.add_subparsers(dest="command", required=True))
    assert parser.parse_args(["chat", "--steps", "3"]).num_inference_steps == 3
    assert parser.parse_args(["chat", "--num-inference-steps", "4"]).num_inference_steps == 4
    assert parser.parse_args(["chat"]).num_inference_steps is None
    with pytest.raises(SystemExit):
        parser.parse_args(["chat", "--steps", "0"])


def test_a_message_naming_its_added_picture_gets_no_attachment_note(tmp_path: Path) -> None:
    """'/add' then 'what is in #1?': the message names the picture, so no '(attached images: ...)' note is added
    (it led the miniature to pass the note as an edit instruction); the handle still names the picture."""
    Image.new("RGB", (40, 40), (200, 20, 20)).save(tmp_path / "red.png")
    plan = [
        {"tool_calls": [{"name": "ground", "args": {"image_id": "#1", "phrase": "the red square"}}]},
        {"content": "Found it."},
    ]
    script = [f"/add {tmp_path / 'red.png'}", "where is the red square in #1?"]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    (tmp_path / "script.json").write_text(json.dumps(script))
    argv = ["chat", "--model", "tiny-random", "--memory", str(tmp_path / "memory"), "--out", str(tmp_path / "out")]
    argv += ["--planner-script", str(tmp_path / "plan.json"), "--script", str(tmp_path / "script.json")]
    argv += ["--steps", "1", "--quiet"]
    assert main(argv) == 0
    transcript = json.loads((tmp_path / "out" / "transcript.json").read_text())
    human = transcript[0]["content"]
    assert "attached images" not in human and len(IMAGE_ID_RE.findall(human)) == 1
    input_id = IMAGE_ID_RE.findall(human)[0]
    assert transcript[1]["tool_calls"][0]["args"]["image_id"] == input_id
