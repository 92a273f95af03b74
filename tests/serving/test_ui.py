"""The web page's handlers (``seedx_agent.serving.ui.SeedXUI``) and the ``ui`` sub-command, without a browser.

The engine is the bundled miniature (its grounding returns real boxes); chat turns are planned by a
``ScriptedPlanner`` so each test knows which tool runs, while the tools, the memory and the workflows are
real. ``test_ui_browser.py`` drives the same page, with the real ``ChatSeedX`` planner, in Chromium.
"""

from __future__ import annotations

import contextlib
import re
import socket
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

gr = pytest.importorskip("gradio", reason="needs Gradio (the ui extra)")
from langchain_core.messages import AIMessage  # noqa: E402
from seedx_agent.graphs import PlannerOutputError, ScriptedPlanner, load_engine  # noqa: E402
from seedx_agent.serving.ui import ChatSession, SeedXUI, build_ui, launch  # noqa: E402
from serving_helpers import free_port  # noqa: E402

from seedx_agent import ConfigError, SeedXEngine, SeedXError  # noqa: E402
from seedx_agent.cli.ui import check_ui_args  # noqa: E402

NAMESPACE = "user:test/ui"


@pytest.fixture(scope="module")
def engine() -> SeedXEngine:
    return load_engine("mini")


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui_out")


def make_ui(engine: SeedXEngine, memory: Any, out_dir: Path, *turns: Any, **options: Any) -> SeedXUI:
    planner = ScriptedPlanner(turns=list(turns))
    options.setdefault("num_inference_steps", 8)  # quick pictures: the handlers, not their quality, are tested here
    return SeedXUI(engine, memory, out_dir=out_dir, chat_planner=planner, namespace=NAMESPACE, **options)


def call(name: str, **args: Any) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"call_{name}"}])


def scene() -> Image.Image:
    """A red disc in the middle of a white 64x64 picture, with a green square in the top right."""
    image = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((24, 24, 40, 40), fill=(200, 20, 20))
    draw.rectangle((46, 4, 60, 18), fill=(30, 160, 40))
    return image


@contextlib.contextmanager
def page_error(pattern: str) -> Iterator[None]:
    """Expect a ``gr.Error`` whose message (what the page shows) matches ``pattern``."""
    with pytest.raises(gr.Error) as caught:
        yield
    assert re.search(pattern, caught.value.message), caught.value.message


def run_turn(ui: SeedXUI, text: str, session: ChatSession, attach: bool = True) -> list[tuple[Any, ...]]:
    return list(ui.chat(text, attach, session))


def last_value(updates: list[tuple[Any, ...]], index: int) -> Any:
    """The last real value (not a ``gr.update()``) an output took during a turn."""
    values = [update[index] for update in updates if not isinstance(update[index], dict)]
    return values[-1] if values else None


# ---------------------------------------------------------------------------------------------- pure helpers


def test_handles_expand_and_shorten() -> None:
    session = ChatSession()
    first, second = "img_" + "a" * 16, "img_" + "b" * 16
    assert (session.handle(first), session.handle(second), session.handle(first)) == ("#1", "#2", "#1")
    assert session.expand("make #2 blue, keep #1 (not abc#1 or #1st)") == (
        f"make {second} blue, keep {first} (not abc#1 or #1st)",
        [],
    )
    assert session.expand("compare #1 and #7") == (f"compare {first} and #7", ["#7"])
    other = "img_" + "c" * 16
    shortened = session.shorten(f"{second} came from {first}; {other} is not ours")
    assert shortened == f"#2 came from #1; {other} is not ours"


def test_compose_names_the_current_picture_only_when_the_text_names_none(
    engine: SeedXEngine, memory: Any, out_dir: Path
) -> None:
    ui = make_ui(engine, memory, out_dir)
    session, *_ = ui.upload(scene(), None)
    current = session.current_id
    assert ui.compose(session, "  what is this? ", attach=True) == f"what is this? ({current})"
    assert ui.compose(session, "what is this?", attach=False) == "what is this?"
    assert ui.compose(session, "where is the disc in #1?", attach=True) == f"where is the disc in {current}?"
    with page_error("#4 names no picture of this chat"):
        ui.compose(session, "describe #4", attach=True)


# ---------------------------------------------------------------------------------------------- chat tab


def test_upload_stores_the_picture_and_lists_it(engine: SeedXEngine, memory: Any, out_dir: Path) -> None:
    ui = make_ui(engine, memory, out_dir)
    session, shown, info, items, ids = ui.upload(scene(), None)
    record = memory.get(session.current_id)
    assert record.kind == "input" and record.namespace == NAMESPACE
    assert session.handles == [record.id] and "**#1**" in info and record.id in info
    assert shown.size == (256, 256)  # a small picture is shown enlarged (nearest neighbour)
    assert ids[0] == record.id and Path(items[0][0]).parent == out_dir.resolve() / "pictures"
    assert Image.open(items[0][0]).size == (256, 256)
    cleared, _shown, info, _items, _ids = ui.upload(None, session)
    assert cleared.current_id is None and "No current picture" in info


def test_ground_boxes_of_the_model_are_drawn_over_the_picture(engine: SeedXEngine, memory: Any, out_dir: Path) -> None:
    ui = make_ui(
        engine,
        memory,
        out_dir,
        call("ground", image_id="$last_image_id", phrase="the red circle"),
        AIMessage(content="Found it."),
    )
    session, *_ = ui.upload(scene(), None)
    updates = run_turn(ui, "Where is the red circle?", session)
    expected = engine.ground(scene(), "the red circle").boxes
    assert expected, "the miniature found no box; the overlay test needs one"
    base, annotations = last_value(updates, 2)
    assert base.size == (256, 256)
    scaled = [tuple(round(value * 4) for value in box.as_tuple()) for box in expected]
    assert [box for box, _label in annotations] == scaled
    assert {label for _box, label in annotations} == {"the red circle"}
    messages = last_value(updates, 0)
    assert messages[0] == {"role": "user", "content": "Where is the red circle? (#1)"}
    assert messages[1]["metadata"]["title"] == "Steps" and messages[1]["metadata"]["status"] == "done"
    assert "ground: 1 box(es) for 'the red circle' on #1" in messages[1]["content"] or len(expected) != 1
    pictures = [m["content"]["path"] for m in messages if isinstance(m["content"], dict)]
    assert len(pictures) == 1 and Path(pictures[0]).is_file()  # the tool's annotated copy, inline
    assert messages[-1] == {"role": "assistant", "content": "Found it."}
    assert session.current_id == session.handles[0]  # an annotated copy does not replace the current picture
    assert updates[-1][-1] == ""  # the textbox is emptied


def test_generated_picture_is_shown_and_becomes_current(engine: SeedXEngine, memory: Any, out_dir: Path) -> None:
    ui = make_ui(
        engine,
        memory,
        out_dir,
        call("generate_image", prompt="a green triangle at the bottom left", seed=3),
        AIMessage(content="Here it is."),
    )
    session = ChatSession()
    updates = run_turn(ui, "Generate an image: a green triangle at the bottom left", session)
    record = memory.get(session.current_id)
    assert record.kind == "generated" and record.prompt == "a green triangle at the bottom left" and record.seed == 3
    messages = last_value(updates, 0)
    assert {"role": "assistant", "content": "**#1** generated, seed 3"} in messages
    assert any(isinstance(m["content"], dict) and record.id in m["content"]["path"] for m in messages)
    assert isinstance(last_value(updates, 3), Image.Image)  # the current-picture component shows it
    assert "**#1**" in last_value(updates, 4)


def test_chat_errors_reach_the_page_as_one_line(engine: SeedXEngine, memory: Any, out_dir: Path) -> None:
    def misplanned(_messages: list[Any]) -> AIMessage:
        raise PlannerOutputError("the planner wrote no JSON object")

    def broken(_messages: list[Any]) -> AIMessage:
        raise RuntimeError("boom\n  at line 3")

    session = ChatSession()
    with page_error(r"^the chat failed: the planner wrote no JSON object$"):
        run_turn(make_ui(engine, memory, out_dir, misplanned), "hello", session)
    assert session.messages[-2]["metadata"]["title"] == "Failed"
    assert session.messages[-1]["content"] == "Error: the chat failed: the planner wrote no JSON object"
    with page_error(r"unexpectedly \(RuntimeError: boom at line 3\)"):
        run_turn(make_ui(engine, memory, out_dir, broken), "hello", session)
    with page_error("no more turns|script|exhausted"):
        run_turn(make_ui(engine, memory, out_dir), "hello", session)  # ScriptExhaustedError, a SeedXError
    with page_error("type a message first"):
        run_turn(make_ui(engine, memory, out_dir), "   ", session)


def test_a_tool_error_is_a_step_line_not_an_error(engine: SeedXEngine, memory: Any, out_dir: Path) -> None:
    ui = make_ui(
        engine,
        memory,
        out_dir,
        call("ground", image_id="img_0123456789abcdef", phrase="the sun"),
        AIMessage(content="I could not find that picture."),
    )
    updates = run_turn(ui, "find the sun", ChatSession())
    steps = last_value(updates, 0)[1]
    assert "ground: failed" in steps["content"] and "img_0123456789abcdef" in steps["content"]


def test_a_recent_picture_of_another_namespace_is_copied_to_the_chat(
    engine: SeedXEngine, memory: Any, out_dir: Path
) -> None:
    ui = make_ui(engine, memory, out_dir)
    story_picture = memory.add(scene(), kind="generated", namespace="story/s-1", prompt="a red disc")
    items, ids = ui.recent()
    assert ids[0] == story_picture.id and items[0][1].startswith("a red disc")
    session, image, info, _items, ids = ui.pick_recent(ids, None, 0)
    copy = memory.get(session.current_id)
    assert copy.namespace == NAMESPACE and copy.parent_id == story_picture.id and copy.operation == "reuse"
    assert image.size == (256, 256) and "**#1**" in info
    with page_error("no longer listed"):
        ui.pick_recent(ids, session, len(ids))


# ---------------------------------------------------------------------------------------------- story and slides


class Progress:
    """Records what a handler reports to ``gr.Progress``."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, str]] = []

    def __call__(self, progress: Any, desc: str = "", **_: Any) -> None:
        self.calls.append((progress, desc))


def test_story_fills_beat_by_beat_and_bundles_the_storyboard(engine: SeedXEngine, memory: Any, out_dir: Path) -> None:
    ui = make_ui(engine, memory, out_dir)
    progress = Progress()
    updates = list(ui.story("a red circle meets a blue square", 2, 0, progress))
    counts = [len(items) for items, _status, _files in updates]
    assert counts == [0, 1, 2, 2]  # the gallery grows beat by beat
    assert updates[1][1].startswith("Beat 1 of 2") and updates[-1][1].startswith("Done: 2 beat(s)")
    assert [value for value, _desc in progress.calls] == [(0, 2), (1, 2), (2, 2)]
    archive, storyboard = updates[-1][2]
    with zipfile.ZipFile(archive) as bundle:
        assert {"storyboard.html", "manifest.json", "beat_000.png", "beat_001.png"} <= set(bundle.namelist())
    assert Path(storyboard).name == "storyboard.html" and Path(storyboard).is_relative_to(out_dir.resolve())


def test_slides_show_previews_and_the_deck(engine: SeedXEngine, memory: Any, out_dir: Path) -> None:
    ui = make_ui(engine, memory, out_dir)
    updates = list(ui.slides("shapes and colours", 2, 0, Progress()))
    previews, status, deck = updates[-1]
    assert len(previews) == 2 and all(Path(path).is_file() for path, _caption in previews)
    assert status.startswith("Done: 2 slide(s)") and Path(deck).name == "deck.pptx" and Path(deck).is_file()
    assert any(status.startswith("Outline:") for _items, status, _deck in updates)


def test_workflow_errors_are_one_line(engine: SeedXEngine, memory: Any, out_dir: Path) -> None:
    class WrongPlanner:
        def plan(self, task: str, schema: type, request: dict[str, Any]) -> Any:
            return {"not": "a plan"}

    ui = make_ui(engine, memory, out_dir, planner=WrongPlanner())
    with page_error(r"^the story failed: planner WrongPlanner returned dict for 'story_beats'$"):
        list(ui.story("a fox", 2, 0))
    with page_error(r"^the slides failed: planner WrongPlanner returned dict"):
        list(ui.slides("tides", 2, 0))
    with page_error("write a premise first"):
        list(ui.story("  ", 2, 0))
    with page_error("write a topic first"):
        list(ui.slides("", 2, 0))


# ---------------------------------------------------------------------------------------------- the page and the CLI


def test_build_ui_and_launch_serve_the_page(engine: SeedXEngine, memory: Any, out_dir: Path) -> None:
    blocks = build_ui(engine, memory, out_dir=out_dir, namespace=NAMESPACE, title="SEED-X test")
    assert isinstance(blocks, gr.Blocks) and isinstance(blocks.seedx_ui, SeedXUI)
    ids = {block.elem_id for block in blocks.blocks.values()}
    assert {"chat", "chat-input", "current-image", "boxes", "recent", "story-gallery", "slides-file"} <= ids
    url = launch(blocks, host="127.0.0.1", port=free_port(), block=False, quiet=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200 and b"SEED-X test" in response.read()
    finally:
        blocks.close()


def ui_args(**changes: Any) -> Any:
    import argparse

    values = {
        "model": "mini",
        "memory": "~/.cache/seedx-agent/memory",
        "out": "outputs/ui",
        "planner": None,
        "namespace": "user:local/ui",
        "host": "127.0.0.1",
        "port": free_port(),
        "chroma": None,
    }
    return argparse.Namespace(**{**values, **changes})


def test_cli_checks_arguments_before_loading(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import seedx_agent.graphs.runtime as runtime

    def no_load(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("the model must not load when an argument is wrong")

    monkeypatch.setattr(runtime, "load_engine", no_load)
    check_ui_args(ui_args(memory=str(tmp_path / "memory"), out=str(tmp_path / "out")))  # all fine
    for changes, message in [
        ({"model": "no-such-model"}, "--model 'no-such-model' does not exist"),
        ({"port": 70000}, r"--port must be in \[1, 65535\]"),
        ({"planner": "no_such_module:Planner"}, "no importable module 'no_such_module'"),
        ({"memory": __file__}, "is a file, not a folder"),
        ({"namespace": "a//b"}, "namespace 'a//b' is malformed"),
        ({"chroma": "chroma.internal"}, "chroma server address 'chroma.internal' is not HOST:PORT"),
    ]:
        with pytest.raises(SeedXError, match=message):  # ConfigError, or the memory's own namespace error
            check_ui_args(ui_args(**changes))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1"):
            check_ui_args(ui_args(port=taken.getsockname()[1]))


def test_cli_ui_is_registered(capsys: pytest.CaptureFixture[str]) -> None:
    from seedx_agent.cli import main

    with pytest.raises(SystemExit):
        main(["ui", "--help"])
    shown = capsys.readouterr().out
    for flag in ("--model", "--memory", "--out", "--planner", "--host", "--port", "--num-inference-steps", "-v"):
        assert flag in shown
    assert main(["ui", "--model", "no-such-model"]) == 2
    assert capsys.readouterr().err.startswith("error: --model 'no-such-model' does not exist")


@pytest.fixture(autouse=True)
def _no_leftover_servers() -> Iterator[None]:
    yield
    gr.close_all()
