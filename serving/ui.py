"""``seedx-agent ui``: a Gradio web page over the chat agent and the story and slides workflows.

``build_ui(engine, memory, ...)`` returns a ``gr.Blocks`` with three tabs:

- **Chat**: upload or paste a picture (it is stored in the image memory and gets a handle, ``#1``), ask the
  chat agent about it; answers stream in with the agent's steps; boxes the model's grounding returns are drawn
  over the picture they belong to; generated and edited pictures appear inline (the newest one becomes the
  current picture). A message that names no picture (``#N`` or an id) is about the current one. The memory's
  recent pictures fill a side gallery; a click makes one the current picture.
- **Story**: a premise becomes a gallery that fills beat by beat, then ``storyboard.zip`` (storyboard.html,
  the beat PNGs, manifest.json) to download.
- **Slides**: a topic becomes slide previews and ``deck.pptx`` to download.

Everything runs on one engine and one memory (``seedx_agent.graphs.runtime`` builds them, as for the CLI);
the story and slides planner is ``load_planner(spec)``, by default ``default_planner(model)`` as in
``seedx-agent story``. Library errors (``SeedXError``, the planners' ``PlannerOutputError`` included) reach the
page as their one-line message (``gr.Error``), never as a stack trace. ``launch(blocks, ...)`` serves the page;
``SeedXUI`` holds the handlers, which ``tests/serving/test_ui.py`` calls without a browser.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image
from seedx_agent.memory import ImageMemory

from seedx_agent import SeedXEngine, SeedXError

__all__ = [
    "CSS",
    "DEFAULT_NAMESPACE",
    "ChatSession",
    "SeedXUI",
    "build_ui",
    "launch",
    "theme",
]

logger = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "user:local/ui"
RECENT_LIMIT = 24  # pictures in the side gallery
DISPLAY_MIN_SIDE = 256  # smaller pictures are enlarged (nearest neighbour) for display, boxes scaled with them
MAX_STORY_BEATS = 25  # the page's slider; the library allows more (seedx-agent story --beats)
MAX_UI_SLIDES = 12
_NEW_PICTURE_TOOLS = frozenset({"generate_image", "edit_image"})  # their artifact's image_id is a new picture
_ID_RE = re.compile(r"\bimg_[0-9a-f]{16}\b")
_HANDLE_RE = re.compile(r"(?<![\w#&])#(\d+)(?!\w)")  # '#2' in 'make #2 blue', not 'abc#2' or '#2nd'

CSS = """
#current-info, #story-status, #slides-status { min-height: 1.5em; }
#chat img { max-height: 200px; width: auto; object-fit: contain; }
"""


def theme() -> gr.themes.Base:
    """The page's theme: Gradio's default on system fonts, so the page loads no web fonts from outside."""
    return gr.themes.Default(
        primary_hue="blue",
        font=("ui-sans-serif", "system-ui", "sans-serif"),
        font_mono=("ui-monospace", "monospace"),
    )


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


@contextmanager
def _user_errors(what: str) -> Iterator[None]:
    """Library and file errors become ``gr.Error`` with their one-line message; anything else is logged with
    its traceback (server side) and reaches the page as one line too."""
    try:
        yield
    except gr.Error:
        raise
    except (SeedXError, OSError) as error:
        raise gr.Error(f"{what} failed: {_one_line(error)}", print_exception=False) from None
    except Exception as error:
        logger.exception("%s failed", what)
        raise gr.Error(
            f"{what} failed unexpectedly ({type(error).__name__}: {_one_line(error)}); the server log has details",
            print_exception=False,
        ) from None


def _text_of(content: Any) -> str:
    """The text of a message content (a string, or a list of blocks whose image blocks are left out)."""
    if isinstance(content, str):
        return content
    parts = [block if isinstance(block, str) else block.get("text", "") for block in content or []]
    return "".join(part for part in parts if isinstance(part, str))


def _display_scale(size: tuple[int, int]) -> int:
    """Integer factor that brings a small picture's short side to at least ``DISPLAY_MIN_SIDE`` (1 if large)."""
    short = max(1, min(size))
    return max(1, math.ceil(DISPLAY_MIN_SIDE / short))


def _for_display(image: Image.Image) -> Image.Image:
    """``image`` enlarged with nearest-neighbour when small (crisp pixels instead of the browser's blur)."""
    scale = _display_scale(image.size)
    if scale == 1:
        return image
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


@dataclass
class ChatSession:
    """One browser session of the chat tab: its agent thread, its picture handles and the current picture."""

    thread_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    handles: list[str] = field(default_factory=list)  # image ids; handle #N is handles[N - 1]
    current_id: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)  # what the Chatbot shows

    def handle(self, image_id: str) -> str:
        """The ``#N`` handle of ``image_id`` (a new one on first sight)."""
        if image_id not in self.handles:
            self.handles.append(image_id)
        return f"#{self.handles.index(image_id) + 1}"

    def expand(self, text: str) -> tuple[str, list[str]]:
        """``text`` with each known ``#N`` replaced by its id, and the handles it names that are unknown."""
        unknown: list[str] = []

        def replace(match: re.Match[str]) -> str:
            index = int(match.group(1)) - 1
            if 0 <= index < len(self.handles):
                return self.handles[index]
            unknown.append(match.group(0))
            return match.group(0)

        return _HANDLE_RE.sub(replace, text), unknown

    def shorten(self, text: str) -> str:
        """``text`` with the ids of this session's pictures written as their handles."""
        return _ID_RE.sub(lambda m: self.handle(m.group(0)) if m.group(0) in self.handles else m.group(0), text)


@dataclass
class _Turn:
    """What one chat turn has shown so far: its progress lines, pictures and the boxes to overlay."""

    lines: list[str] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)
    overlay: tuple[str, list[tuple[list[float], str]]] | None = None
    new_current: str | None = None


class SeedXUI:
    """The page's handlers over one engine, memory and planner (see the module docstring); Gradio-free logic
    where possible, so tests call them directly."""

    def __init__(
        self,
        engine: SeedXEngine,
        memory: ImageMemory,
        *,
        out_dir: str | Path = "outputs/ui",
        model: str | None = None,
        planner: object | str | None = None,
        chat_planner: object | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        num_inference_steps: int | None = None,
    ) -> None:
        from langgraph.checkpoint.memory import InMemorySaver
        from seedx_agent.graphs.chat_agent import create_chat_agent, seedx_agent_options, seedx_planner
        from seedx_agent.graphs.runtime import default_planner, load_planner
        from seedx_agent.tools import make_seedx_tools

        self.engine = engine
        self.memory = memory
        self.namespace = namespace
        self.num_inference_steps = num_inference_steps
        self.out_dir = Path(out_dir).expanduser().resolve()
        self.pictures_dir = self.out_dir / "pictures"
        self.model = model or engine.model.config.name
        tools = make_seedx_tools(engine, memory, namespace=namespace, default_steps=num_inference_steps)
        options: dict[str, Any] = {}
        if chat_planner is None:
            chat_planner = seedx_planner(engine, memory, namespace)
            options = seedx_agent_options(engine)
        self.chat_graph = create_chat_agent(chat_planner, tools, checkpointer=InMemorySaver(), **options)
        if planner is None or isinstance(planner, str):
            planner = load_planner(planner or default_planner(self.model), engine, memory)
        self.planner = planner
        self._files_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ pictures

    def picture_file(self, image_id: str) -> Path:
        """A display PNG of a stored picture under ``out_dir/pictures`` (written once, enlarged when small)."""
        path = self.pictures_dir / f"{image_id}.png"
        with self._files_lock:
            if not path.is_file():
                self.pictures_dir.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
                _for_display(self.memory.load(image_id)).save(tmp, format="PNG")
                os.replace(tmp, path)
        return path

    def overlay(self, image_id: str, boxes: list[tuple[list[float], str]]) -> tuple[Image.Image, list[Any]]:
        """``gr.AnnotatedImage`` value: the picture (enlarged when small) and its pixel boxes, scaled alike."""
        image = self.memory.load(image_id)
        scale = _display_scale(image.size)
        shown = _for_display(image)
        annotations = []
        for box, label in boxes:
            x1, y1, x2, y2 = (round(value * scale) for value in box)
            x1, x2 = sorted((max(0, min(x1, shown.width)), max(0, min(x2, shown.width))))
            y1, y2 = sorted((max(0, min(y1, shown.height)), max(0, min(y2, shown.height))))
            annotations.append(((x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)), label))
        return shown, annotations

    def recent(self, limit: int = RECENT_LIMIT) -> tuple[list[tuple[str, str]], list[str]]:
        """The memory's newest pictures (all namespaces) as gallery items ``(file, caption)`` and their ids."""
        records = self.memory.find()[-limit:][::-1]
        items = []
        for record in records:
            caption = record.prompt or record.caption or record.kind
            items.append((str(self.picture_file(record.id)), f"{caption[:60]} ({record.id})"))
        return items, [record.id for record in records]

    def _current_info(self, session: ChatSession) -> str:
        if session.current_id is None:
            return "No current picture: upload or paste one, or pick one from the recent pictures."
        record = self.memory.get(session.current_id)
        return (
            f"Current picture: **{session.handle(record.id)}** `{record.id}` ({record.width}x{record.height}); "
            "a message that names no picture is about it."
        )

    def use_picture(self, session: ChatSession, image_id: str) -> ChatSession:
        """Make a stored picture the session's current one; pictures of other namespaces (a story's, a deck's)
        are copied into the chat's namespace first, since the chat tools read only their own namespace."""
        record = self.memory.get(image_id)
        if not (record.namespace + "/").startswith(self.namespace + "/"):
            copy = self.memory.add(
                self.memory.load(image_id),
                kind="input",
                namespace=self.namespace,
                prompt=record.prompt,
                caption=record.caption,
                parent_id=image_id,
                operation="reuse",
            )
            image_id = copy.id
        session.current_id = image_id
        session.handle(image_id)
        return session

    # ------------------------------------------------------------------------------------------ chat handlers

    def upload(self, image: Image.Image | None, session: ChatSession | None) -> tuple[Any, ...]:
        """Store an uploaded or pasted picture as the current one; returns (session, shown picture, info,
        gallery, ids); a small picture is shown enlarged."""
        session = session or ChatSession()
        with _user_errors("storing the picture"):
            shown: Any = gr.update()
            if image is None:
                session.current_id = None
            else:
                record = self.memory.add(image, kind="input", namespace=self.namespace)
                self.use_picture(session, record.id)
                if _display_scale(image.size) > 1:
                    shown = _for_display(image)
            items, ids = self.recent()
            return session, shown, self._current_info(session), items, ids

    def pick_recent(self, ids: list[str], session: ChatSession | None, index: int) -> tuple[Any, ...]:
        """Make the ``index``-th recent picture current; returns (session, image, info, gallery, ids)."""
        session = session or ChatSession()
        with _user_errors("choosing the picture"):
            if not 0 <= index < len(ids):
                raise gr.Error("that picture is no longer listed; refresh the recent pictures", print_exception=False)
            self.use_picture(session, ids[index])
            items, ids = self.recent()
            image = _for_display(self.memory.load(session.current_id))
            return session, image, self._current_info(session), items, ids

    def refresh(self, session: ChatSession | None) -> tuple[Any, ...]:
        """The gallery and the current-picture line, e.g. on page load; returns (info, gallery, ids)."""
        with _user_errors("listing the recent pictures"):
            items, ids = self.recent()
            return self._current_info(session or ChatSession()), items, ids

    def compose(self, session: ChatSession, text: str, attach: bool) -> str:
        """The message the agent gets: handles expanded to ids, and the current picture's id appended when the
        text names no picture (and ``attach`` is on)."""
        expanded, unknown = session.expand(text.strip())
        if unknown:
            known = f"#1 to #{len(session.handles)}" if session.handles else "none yet"
            raise gr.Error(
                f"{', '.join(unknown)} names no picture of this chat (handles: {known})", print_exception=False
            )
        if attach and session.current_id is not None and not _ID_RE.search(expanded):
            expanded = f"{expanded} ({session.current_id})"
        return expanded

    def chat(self, text: str, attach: bool, session: ChatSession | None) -> Iterator[tuple[Any, ...]]:
        """Run one agent turn, streaming (messages, session, overlay, current image, info, textbox) updates."""
        from langchain_core.messages import HumanMessage

        session = session or ChatSession()
        if not text or not text.strip():
            raise gr.Error("type a message first", print_exception=False)
        with _user_errors("the chat"):
            message = self.compose(session, text, attach)
        session.messages.append({"role": "user", "content": session.shorten(message)})
        turn = _Turn()
        steps = {"role": "assistant", "content": "", "metadata": {"title": "Working", "status": "pending"}}
        session.messages.append(steps)
        nothing = gr.update()
        yield session.messages, session, nothing, nothing, nothing, ""
        config = {"configurable": {"thread_id": session.thread_id}}
        try:
            with _user_errors("the chat"):
                for mode, chunk in self.chat_graph.stream(
                    {"messages": [HumanMessage(message)]},
                    config,
                    stream_mode=["custom", "updates"],
                    durability="sync",
                ):
                    if mode == "custom":
                        turn.lines.append(self._progress_line(chunk, session))
                    else:
                        self._take_update(chunk, session, turn)
                    steps["content"] = "\n".join(f"- {line}" for line in turn.lines)
                    yield (*self._chat_outputs(session, turn), "")
        except gr.Error as error:
            steps["metadata"] = {"title": "Failed", "status": "done"}
            session.messages.append({"role": "assistant", "content": f"Error: {error.message}"})
            yield (*self._chat_outputs(session, turn), nothing)
            raise
        steps["metadata"] = {
            "title": "Steps",
            "status": "done",
            "duration": round(time.perf_counter() - turn.start, 1),
        }
        yield (*self._chat_outputs(session, turn), "")

    def _chat_outputs(self, session: ChatSession, turn: _Turn) -> tuple[Any, ...]:
        """(messages, session, overlay, current image, info) after the latest step of a turn."""
        overlay = self.overlay(*turn.overlay) if turn.overlay else gr.update()
        if turn.new_current is not None:
            image = _for_display(self.memory.load(turn.new_current))
            turn.new_current = None
            return session.messages, session, overlay, image, self._current_info(session)
        return session.messages, session, overlay, gr.update(), gr.update()

    def _progress_line(self, event: dict[str, Any], session: ChatSession) -> str:
        kind, tool = event.get("event"), event.get("tool")
        seconds = event.get("seconds")
        took = f" ({seconds:.1f} s)" if isinstance(seconds, (int, float)) else ""
        if kind == "planner_start":
            return "planning"
        if kind == "planner_end":
            calls = event.get("tool_calls") or []
            return f"planner {'calls ' + ', '.join(calls) if calls else 'answers'}{took}"
        if kind == "tool_start":
            return f"{tool}: running"
        if kind == "tool_end":
            return f"{tool}: {'failed' if event.get('status') == 'error' else 'done'}{took}"
        details = ", ".join(f"{key}={value}" for key, value in event.items() if key != "event")
        return session.shorten(f"{kind}: {details}")

    def _take_update(self, chunk: dict[str, Any], session: ChatSession, turn: _Turn) -> None:
        """Show what a graph step added: a tool's pictures and boxes, or the planner's final answer."""
        for node, update in chunk.items():
            messages = update.get("messages", []) if isinstance(update, dict) else []
            for message in messages:
                if message.type == "tool":
                    self._take_tool_result(message, session, turn)
                elif node == "planner" and message.type == "ai" and not message.tool_calls:
                    for image_id in (message.response_metadata or {}).get("image_ids") or []:
                        self._show_picture(session, turn, image_id, "drawn by the planner", current=True)
                    answer = session.shorten(_text_of(message.content)).strip()
                    session.messages.append({"role": "assistant", "content": answer or "(no answer text)"})

    def _take_tool_result(self, message: Any, session: ChatSession, turn: _Turn) -> None:
        artifact = message.artifact if isinstance(message.artifact, dict) else {}
        if message.status != "success" or not artifact:
            turn.lines.append(f"{message.name}: {session.shorten(_text_of(message.content))[:300]}")
            return
        if message.name == "ground":
            boxes = artifact.get("boxes") or []
            phrase = str(artifact.get("phrase") or "found")
            if boxes:
                turn.overlay = (artifact["image_id"], [(box, phrase) for box in boxes])
                turn.lines.append(
                    f"ground: {len(boxes)} box(es) for {phrase!r} on {session.handle(artifact['image_id'])}"
                )
            else:
                turn.lines.append(f"ground: no box for {phrase!r}")
            if artifact.get("annotated_image_id"):
                self._show_picture(session, turn, artifact["annotated_image_id"], f"boxes for {phrase!r}")
        elif message.name == "comprehend":
            boxes = artifact.get("boxes") or []
            image_ids = artifact.get("image_ids") or []
            if boxes and image_ids:
                turn.overlay = (image_ids[0], [(box, "answer") for box in boxes])
        elif message.name in _NEW_PICTURE_TOOLS and isinstance(artifact.get("image_id"), str):
            what = "generated" if message.name == "generate_image" else f"edited from {artifact.get('parent_id')}"
            seed = artifact.get("seed")
            self._show_picture(session, turn, artifact["image_id"], f"{what}, seed {seed}", current=True)

    def _show_picture(self, session: ChatSession, turn: _Turn, image_id: str, what: str, current: bool = False) -> None:
        handle = session.handle(image_id)
        path = self.picture_file(image_id)
        session.messages.append({"role": "assistant", "content": session.shorten(f"**{handle}** {what}")})
        session.messages.append(
            {"role": "assistant", "content": {"path": str(path), "alt_text": f"{handle} {image_id}"}}
        )
        if current:
            session.current_id = image_id
            turn.new_current = image_id

    def clear_chat(self) -> tuple[Any, ...]:
        """A new conversation (new thread, no handles); the memory keeps every picture."""
        session = ChatSession()
        return [], session, None, None, self._current_info(session)

    # ------------------------------------------------------------------------------------------ story and slides

    def story(self, premise: str, beats: int, seed: int, progress: Any = None) -> Iterator[tuple[Any, ...]]:
        """Run the story graph; stream (gallery, status, files) as beats finish, then the storyboard download."""
        from seedx_agent.graphs import create_story_graph

        if not premise or not premise.strip():
            raise gr.Error("write a premise first, e.g. 'a fox who learns to fly'", print_exception=False)
        beats, seed = int(beats), int(seed or 0)  # a cleared seed field is None
        story_id = f"story-{secrets.token_hex(4)}"
        out = self.out_dir / "stories" / story_id
        items: list[tuple[str, str]] = []
        yield [], f"Planning {beats} beat(s)…", None
        with _user_errors("the story"):
            graph = create_story_graph(
                self.engine,
                self.memory,
                planner=self.planner,
                steps=beats,
                out_dir=out,
                num_inference_steps=self.num_inference_steps,
            )
            final: dict[str, Any] = {}
            _progress(progress, 0, beats, "planning")
            stream = graph.stream(
                {"premise": premise.strip(), "base_seed": seed, "story_id": story_id},
                stream_mode=["custom", "values"],
            )
            for mode, chunk in stream:
                if mode == "values":
                    final = chunk
                elif chunk.get("event") == "story_step":
                    done = chunk["step"] + 1
                    items.append((str(self.picture_file(chunk["image_id"])), f"{done}. {chunk['text']}"))
                    _progress(progress, done, beats, f"beat {done}/{beats}")
                    yield list(items), f"Beat {done} of {beats}: {chunk['text']}", None
            archive = _zip_folder(out, out / "storyboard.zip", ("storyboard.html", "manifest.json", "*.png"))
            consistent = sum(1 for item in _manifest_beats(final) if item.get("consistent") is not False)
            status = f"Done: {beats} beat(s), {consistent} consistent with the story; story `{story_id}`."
            yield list(items), status, [str(archive), str(final["storyboard"])]

    def slides(self, topic: str, count: int, seed: int, progress: Any = None) -> Iterator[tuple[Any, ...]]:
        """Run the slides graph; stream (gallery, status, file): pictures as they come, then the previews and
        the .pptx."""
        from seedx_agent.graphs import create_slides_graph

        if not topic or not topic.strip():
            raise gr.Error("write a topic first, e.g. 'how tides work'", print_exception=False)
        count, seed = int(count), int(seed or 0)
        deck_id = f"deck-{secrets.token_hex(4)}"
        out = self.out_dir / "slides" / deck_id
        items: list[tuple[str, str]] = []
        yield [], "Writing the outline…", None
        with _user_errors("the slides"):
            graph = create_slides_graph(
                self.engine,
                self.memory,
                planner=self.planner,
                out_dir=out,
                n_slides=count,
                num_inference_steps=self.num_inference_steps,
            )
            final: dict[str, Any] = {}
            total, done, titles = count, 0, [""] * count
            _progress(progress, 0, total, "outline")
            stream = graph.stream(
                {"topic": topic.strip(), "base_seed": seed, "deck_id": deck_id}, stream_mode=["custom", "values"]
            )
            for mode, chunk in stream:
                if mode == "values":
                    final = chunk
                    continue
                event = chunk.get("event")
                if event == "slides_outline":
                    titles = list(chunk["titles"])
                    yield list(items), "Outline: " + "; ".join(titles), None
                elif event in {"slide_picture", "slide_refine"}:
                    total += event == "slide_refine"
                    done += 1
                    index = chunk["slide"]
                    title = titles[index] if index < len(titles) else ""
                    note = "picture" if event == "slide_picture" else f"correction {chunk.get('attempt')}"
                    items.append((str(self.picture_file(chunk["image_id"])), f"slide {index + 1} {note}: {title}"))
                    _progress(progress, done, total, f"slide {index + 1}: {note}")
                    yield list(items), f"Slide {index + 1} of {count}: {note}", None
            previews = [(path, f"slide {index + 1}") for index, path in enumerate(final.get("previews") or [])]
            passed = sum(1 for slide in final.get("slides") or [] if slide.get("passed"))
            yield previews, f"Done: {count} slide(s), {passed} passed their checks; deck `{deck_id}`.", final["pptx"]


def _progress(progress: Any, done: int, total: int, desc: str) -> None:
    if progress is not None:
        progress((done, total), desc=desc, unit="step")


def _manifest_beats(final: dict[str, Any]) -> list[dict[str, Any]]:
    manifest = final.get("manifest")
    return json.loads(Path(manifest).read_text(encoding="utf-8"))["beats"] if manifest else []


def _zip_folder(folder: Path, archive: Path, patterns: tuple[str, ...]) -> Path:
    """``archive`` holding the files of ``folder`` matching ``patterns`` (flat, by name)."""
    tmp = archive.with_name(f".{archive.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for pattern in patterns:
            for path in sorted(folder.glob(pattern)):
                bundle.write(path, arcname=path.name)
    os.replace(tmp, archive)
    return archive


# ---------------------------------------------------------------------------------------------- the page


def build_ui(
    engine: SeedXEngine,
    memory: ImageMemory,
    *,
    out_dir: str | Path = "outputs/ui",
    model: str | None = None,
    planner: object | str | None = None,
    chat_planner: object | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    num_inference_steps: int | None = None,
    title: str = "SEED-X",
) -> gr.Blocks:
    """The page (chat, story and slides tabs) over ``engine`` and ``memory``; serve it with ``launch``.

    ``planner`` plans the story and slides (a ``load_planner`` spec or object; default ``default_planner(model)``,
    ``model`` defaulting to the engine's config name); ``chat_planner`` replaces the chat's ``ChatSeedX``
    planner (e.g. a ``ScriptedPlanner``); new pictures go to ``namespace``; story and slides files to
    ``out_dir``."""
    ui = SeedXUI(
        engine,
        memory,
        out_dir=out_dir,
        model=model,
        planner=planner,
        chat_planner=chat_planner,
        namespace=namespace,
        num_inference_steps=num_inference_steps,
    )
    with gr.Blocks(title=title, analytics_enabled=False) as blocks:
        gr.Markdown(f"## {title}: ask about pictures, draw and edit them, write stories and slides")
        with gr.Tab("Chat", id="chat"):
            session, info, gallery, recent_ids = _chat_tab(ui)
        with gr.Tab("Story", id="story"):
            _story_tab(ui)
        with gr.Tab("Slides", id="slides"):
            _slides_tab(ui)
        blocks.load(ui.refresh, [session], [info, gallery, recent_ids], show_progress="hidden")
    blocks.seedx_ui = ui  # type: ignore[attr-defined]  # launch() serves its out_dir; tests reach the handlers
    return blocks


def _chat_tab(ui: SeedXUI) -> tuple[Any, ...]:
    session = gr.State(None)
    recent_ids = gr.State([])
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label="Chat", elem_id="chat", height=520, buttons=["copy"], feedback_options=None)
            with gr.Row():
                text = gr.Textbox(
                    show_label=False,
                    placeholder="Ask about the current picture, or e.g. 'Where is the red circle in #1?', "
                    "'Generate an image: a lighthouse at dusk'",
                    elem_id="chat-input",
                    scale=5,
                    submit_btn=True,
                )
            with gr.Row():
                attach = gr.Checkbox(value=True, label="a message that names no picture is about the current one")
                clear = gr.Button("New conversation", size="sm", variant="secondary")
        with gr.Column(scale=2):
            image = gr.Image(
                label="Current picture (upload or paste)",
                type="pil",
                sources=["upload", "clipboard"],
                elem_id="current-image",
                height=300,
            )
            info = gr.Markdown(elem_id="current-info")
            boxes = gr.AnnotatedImage(label="Boxes the model found", elem_id="boxes", height=300)
            with gr.Accordion("Recent pictures (click one to use it)", open=True):
                gallery = gr.Gallery(
                    show_label=False,
                    elem_id="recent",
                    columns=4,
                    height=220,
                    allow_preview=False,
                    object_fit="contain",
                    fit_columns=False,
                )
                refresh = gr.Button("Refresh", size="sm", variant="secondary")

    uploaded = [session, image, info, gallery, recent_ids]
    image.upload(ui.upload, [image, session], uploaded, show_progress="minimal")
    image.clear(ui.upload, [image, session], uploaded, show_progress="hidden")

    def pick(ids: list[str], state: ChatSession | None, event: gr.SelectData) -> tuple[Any, ...]:
        return ui.pick_recent(ids, state, event.index)

    gallery.select(pick, [recent_ids, session], [session, image, info, gallery, recent_ids], show_progress="minimal")
    outputs = [chatbot, session, boxes, image, info, text]
    text.submit(ui.chat, [text, attach, session], outputs, show_progress="hidden").then(
        ui.refresh, [session], [info, gallery, recent_ids], show_progress="hidden"
    )
    clear.click(ui.clear_chat, None, [chatbot, session, boxes, image, info], show_progress="hidden")
    refresh.click(ui.refresh, [session], [info, gallery, recent_ids], show_progress="minimal")
    return session, info, gallery, recent_ids


def _story_tab(ui: SeedXUI) -> None:
    with gr.Row():
        premise = gr.Textbox(label="Premise", placeholder="a fox who learns to fly", elem_id="premise", scale=4)
        beats = gr.Slider(1, MAX_STORY_BEATS, value=4, step=1, label="Beats", scale=2)
        seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", scale=1)
    run = gr.Button("Write the story", variant="primary", elem_id="story-run")
    status = gr.Markdown(elem_id="story-status")
    gallery = gr.Gallery(
        label="Beats", elem_id="story-gallery", columns=5, height=420, object_fit="contain", fit_columns=False
    )
    files = gr.File(label="Storyboard", file_count="multiple", elem_id="story-files")

    def run_story(text: str, count: int, base: int, progress: gr.Progress = gr.Progress()) -> Iterator[Any]:  # noqa: B008
        yield from ui.story(text, count, base, progress)

    run.click(run_story, [premise, beats, seed], [gallery, status, files], show_progress_on=[status])


def _slides_tab(ui: SeedXUI) -> None:
    with gr.Row():
        topic = gr.Textbox(label="Topic", placeholder="how tides work", elem_id="topic", scale=4)
        count = gr.Slider(1, MAX_UI_SLIDES, value=4, step=1, label="Slides", scale=2)
        seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", scale=1)
    run = gr.Button("Make the slides", variant="primary", elem_id="slides-run")
    status = gr.Markdown(elem_id="slides-status")
    gallery = gr.Gallery(
        label="Slides", elem_id="slides-gallery", columns=3, height=420, object_fit="contain", fit_columns=False
    )
    deck = gr.File(label="Deck (.pptx)", elem_id="slides-file")

    def run_slides(text: str, number: int, base: int, progress: gr.Progress = gr.Progress()) -> Iterator[Any]:  # noqa: B008
        yield from ui.slides(text, number, base, progress)

    run.click(run_slides, [topic, count, seed], [gallery, status, deck], show_progress_on=[status])


def launch(
    blocks: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    block: bool = True,
    quiet: bool = False,
) -> str:
    """Serve ``blocks`` (from ``build_ui``) on ``host:port`` with the page's theme; returns the local URL.

    No share link, no analytics, no server-side rendering; only ``out_dir`` (pictures, stories, decks) is served
    besides Gradio's own cache. ``block=False`` returns at once (the server runs in a thread)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    ui: SeedXUI | None = getattr(blocks, "seedx_ui", None)
    allowed = [str(ui.out_dir)] if ui is not None else []
    if ui is not None:
        ui.out_dir.mkdir(parents=True, exist_ok=True)
    blocks.queue(default_concurrency_limit=1)
    _app, url, _share = blocks.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=not block,
        quiet=quiet,
        allowed_paths=allowed,
        ssr_mode=False,
        mcp_server=False,
        enable_monitoring=False,
        footer_links=[],
        theme=theme(),
        css=CSS,
    )
    return url
