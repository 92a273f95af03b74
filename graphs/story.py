"""A LangGraph story graph: a premise in any words becomes N illustrated beats (SEED-Story / SEED-X-I style).

The planner (any chat model, or a deterministic plug-in) writes the story a chunk of beats at a time: page text,
a picture prompt, the characters shown, and whether the scene carries over. Each beat is then illustrated
with SEED-X through the shared ``SeedXToolbox`` (so every picture is stored with lineage):

- a beat that keeps the scene is an *edit* of the previous picture;
- otherwise the picture is *generated*, reading the latest pictures of the beat's characters (recalled from
  memory) as image context, so they keep their look;
- the picture is checked by comprehension (the beat's checks, or "is <character> in the picture?" for each
  character); when a check fails it is drawn once more, generated anew (with the same image context and a
  new seed), since an edit that lost a character rarely finds it again by editing.

Memory discipline, so 25+ beats run in constant memory: the state holds ids and short texts only, a window of
the last beats, at most ``PLAN_CHUNK`` planned beats and the newest picture ids per character. Pictures live
in the ``ImageMemory`` under ``story/<story_id>``; ``beat_NNN.png`` and a JSON line per beat are appended to
``out_dir`` as beats finish; ``storyboard.html`` and ``manifest.json`` are written at the end. Every picture
is found again by its seed, so a resumed run never redoes a finished beat.
"""

from __future__ import annotations

import html
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from seedx_agent.memory import ImageMemory, ImageRecord
from seedx_agent.tools import SeedXToolbox
from typing_extensions import TypedDict

from seedx_agent.engine import SeedXEngine
from seedx_agent.errors import ConfigError, InvalidPromptError

from .checks import run_checks
from .planning import Check, StoryBeat, StoryChunk, as_planner, plan_checked

__all__ = [
    "MAX_STORY_STEPS",
    "PLAN_CHUNK",
    "RECENT_WINDOW",
    "StoryState",
    "create_story_graph",
    "make_story_graph",
]

logger = logging.getLogger(__name__)

MAX_STORY_STEPS = 500
RECENT_WINDOW = 8  # beats kept in the graph state; older ones live only in memory and on disk
PLAN_CHUNK = 8  # beats asked of the planner at once
MAX_CHARACTERS = 16
RETRY_SEED_OFFSET = 10_000  # attempt a of beat i uses seed base + i + a * offset (beats < MAX_STORY_STEPS)
STORY_LOG = "story.jsonl"
STORYBOARD = "storyboard.html"
MANIFEST = "manifest.json"


def _keep_recent(left: list[dict[str, Any]] | None, right: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Reducer: append the new beat summaries and keep only the last ``RECENT_WINDOW`` (bounded state)."""
    return [*(left or []), *(right or [])][-RECENT_WINDOW:]


class StoryState(TypedDict, total=False):
    """Ids and short texts only; pixels live in the image memory."""

    premise: str
    input_image_ids: list[str]
    story_id: str
    base_seed: int
    steps: int
    namespace: str
    step: int  # the next beat to illustrate
    characters: list[dict[str, str]]  # name + description, at most MAX_CHARACTERS
    pending: list[dict[str, Any]]  # planned, not yet illustrated beats (at most PLAN_CHUNK)
    character_images: dict[str, list[str]]  # newest picture ids per character (at most recall_k each)
    last_image_id: str | None
    recent: Annotated[list[dict[str, Any]], _keep_recent]
    storyboard: str | None
    manifest: str | None


def _check_steps(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_STORY_STEPS:
        raise ConfigError(f"{name} must be an int in [1, {MAX_STORY_STEPS}], got {value!r}")


def default_checks(beat: StoryBeat, characters: list[dict[str, str]]) -> list[Check]:
    """The beat's own checks, else one yes/no question per character shown ("is <description> in it?")."""
    if beat.checks:
        return list(beat.checks)
    looks = {c["name"]: c["description"] for c in characters}
    return [
        Check(
            kind="ask",
            query=f"Is there {looks.get(name, name)} in the picture? Answer yes or no.",
            expect="yes",
            tag=f"character:{name}",
        )
        for name in beat.characters
    ]


def create_story_graph(
    engine: SeedXEngine,
    memory: ImageMemory,
    *,
    planner: object,
    steps: int = 25,
    out_dir: str | Path = "outputs/story",
    recall_k: int = 2,
    num_inference_steps: int | None = None,
    checkpointer: BaseCheckpointSaver | None = None,
) -> CompiledStateGraph:
    """A compiled story graph. Input: ``{"premise": str}`` plus optional ``input_image_ids``, ``steps``,
    ``base_seed`` (default 0) and ``story_id``; the output state holds ``story_id``, ``namespace``, ``recent``
    and the ``storyboard`` / ``manifest`` paths.

    ``planner`` is a LangChain chat model or a ``StructuredPlanner``; ``recall_k`` pictures per character (the
    newest) are the image context of a new picture (0: none); ``num_inference_steps`` overrides the diffusion
    steps. Invoke with ``durability="sync"`` to have each finished beat checkpointed before the next starts.
    """
    _check_steps(steps, "steps")
    if isinstance(recall_k, bool) or not isinstance(recall_k, int) or not 0 <= recall_k <= RECENT_WINDOW:
        raise ConfigError(f"recall_k must be an int in [0, {RECENT_WINDOW}], got {recall_k!r}")
    plans = as_planner(planner)
    out = Path(out_dir)

    def start(state: StoryState) -> dict[str, Any]:
        premise = state.get("premise")
        if not isinstance(premise, str) or not premise.strip():
            raise InvalidPromptError(f"premise must be a non-empty string, got {premise!r}; e.g. 'a fox who flies'")
        total = state.get("steps", steps)
        _check_steps(total, "input steps")
        base_seed = state.get("base_seed", 0)
        if isinstance(base_seed, bool) or not isinstance(base_seed, int) or base_seed < 0:
            raise ConfigError(f"base_seed must be a non-negative int, got {base_seed!r}")
        input_ids = list(state.get("input_image_ids") or [])
        for image_id in input_ids:
            memory.get(image_id)  # UnknownImageError names the bad id
        story_id = state.get("story_id") or f"story-{secrets.token_hex(4)}"
        namespace = f"story/{story_id}"
        get_stream_writer()({"event": "story_start", "story_id": story_id, "steps": total, "namespace": namespace})
        return {
            "premise": premise.strip(),
            "input_image_ids": input_ids,
            "story_id": story_id,
            "namespace": namespace,
            "base_seed": base_seed,
            "steps": total,
            "step": 0,
            "characters": [],
            "pending": [],
            "character_images": {},
            "last_image_id": input_ids[-1] if input_ids else None,
            "storyboard": None,
            "manifest": None,
        }

    def plan(state: StoryState) -> dict[str, Any]:
        step, total = state["step"], state["steps"]
        count = min(PLAN_CHUNK, total - step)
        known = list(state.get("characters") or [])
        request = {
            "premise": state["premise"],
            "first_beat": step,
            "count": count,
            "total_beats": total,
            "characters": known,
            "previous": [item["text"] for item in state.get("recent") or []],
            "has_input_image": bool(state["input_image_ids"]),
            "seed": state["base_seed"],
        }

        def validate(chunk: StoryChunk) -> None:
            if len(chunk.beats) != count:
                raise ValueError(f"{len(chunk.beats)} beats were written, exactly {count} were asked for")
            names = {c["name"] for c in known} | {c.name for c in chunk.characters}
            unknown = sorted({n for beat in chunk.beats for n in beat.characters} - names)
            if unknown:
                raise ValueError(f"beats name characters {unknown} that are not in the character list {sorted(names)}")

        chunk = plan_checked(plans, "story_beats", StoryChunk, request, validate)
        characters = known + [c.model_dump() for c in chunk.characters if c.name not in {k["name"] for k in known}]
        if len(characters) > MAX_CHARACTERS:
            raise ConfigError(f"the story has {len(characters)} characters; at most {MAX_CHARACTERS} are kept")
        get_stream_writer()({"event": "story_plan", "first_beat": step, "beats": [b.text for b in chunk.beats]})
        return {"characters": characters, "pending": [beat.model_dump() for beat in chunk.beats]}

    def illustrate(state: StoryState) -> dict[str, Any]:
        step, namespace = state["step"], state["namespace"]
        beat = StoryBeat.model_validate(state["pending"][0])
        toolbox = SeedXToolbox(engine, memory, namespace, num_inference_steps)
        source_id = state.get("last_image_id")
        if source_id is not None and source_id in state["input_image_ids"]:
            source_id = _story_copy(source_id, namespace)
        mode = "edit" if beat.same_scene and source_id else "generate"
        images_of = state.get("character_images") or {}
        context_ids: list[str] = []
        if recall_k:
            for name in beat.characters:
                for image_id in reversed(images_of.get(name, [])):
                    if image_id not in context_ids and len(context_ids) < recall_k:
                        context_ids.append(image_id)
        checks = default_checks(beat, state.get("characters") or [])
        attempts: list[dict[str, Any]] = []
        record: ImageRecord | None = None
        for attempt in range(2):  # one redraw when a check fails: drawn anew, since an edit may have lost them
            seed = state["base_seed"] + step + attempt * RETRY_SEED_OFFSET
            how = mode if attempt == 0 else "generate"
            used = context_ids if how == "generate" else []
            record = _picture(toolbox, beat, how, seed, source_id, used, namespace, step)
            results = run_checks(engine, memory.load(record.id, namespace=namespace), checks) if checks else []
            attempts.append({"image_id": record.id, "seed": seed, "mode": how, "context_ids": used, "checks": results})
            if all(r["passed"] for r in results):
                break
        assert record is not None
        final = attempts[-1]
        summary = {
            "step": step,
            "text": beat.text,
            "picture_prompt": beat.picture_prompt,
            "characters": beat.characters,
            "mode": final["mode"],
            "instruction": beat.edit_instruction if final["mode"] == "edit" else None,
            "image_id": record.id,
            "parent_id": record.parent_id,
            "context_ids": final["context_ids"],
            "seed": final["seed"],
            "consistent": all(r["passed"] for r in final["checks"]) if checks else None,
            "attempts": attempts,
        }
        _write_beat(memory, out, namespace, record, summary)
        get_stream_writer()({"event": "story_step", "steps": state["steps"], **summary})
        updated = dict(images_of)
        for name in beat.characters:
            updated[name] = [*updated.get(name, []), record.id][-max(1, recall_k) :]
        return {
            "recent": [summary],
            "pending": state["pending"][1:],
            "character_images": updated,
            "last_image_id": record.id,
            "step": step + 1,
        }

    def _story_copy(image_id: str, namespace: str) -> str:
        """The story's own copy of an input picture (stored once, child of the original), so lineage stays whole."""
        found = memory.find({"$and": [{"parent_id": image_id}, {"operation": "story-input"}]}, namespace=namespace)
        if found:
            return found[0].id
        with memory.load(image_id) as picture:
            return memory.add(
                picture, kind="input", namespace=namespace, parent_id=image_id, operation="story-input"
            ).id

    def _picture(
        toolbox: SeedXToolbox,
        beat: StoryBeat,
        mode: str,
        seed: int,
        source_id: str | None,
        context_ids: list[str],
        namespace: str,
        step: int,
    ) -> ImageRecord:
        done = memory.find({"seed": seed}, namespace=namespace, limit=1)  # resumed after a crash mid-beat
        if done:
            logger.info("story %s beat %d already in memory as %s; reusing it", namespace, step, done[0].id)
            return done[0]
        if mode == "edit":
            assert source_id is not None
            instruction = beat.edit_instruction or beat.picture_prompt
            return toolbox.revise(
                source_id, instruction, seed=seed, operation="story-edit", prompt=beat.picture_prompt, caption=beat.text
            )
        return toolbox.render(
            beat.picture_prompt, seed=seed, context_ids=context_ids, operation="story-generate", caption=beat.text
        )

    def route(state: StoryState) -> Literal["plan", "illustrate", "finish"]:
        if state["step"] >= state["steps"]:
            return "finish"
        return "illustrate" if state.get("pending") else "plan"

    def finish(state: StoryState) -> dict[str, Any]:
        storyboard, manifest = _write_storyboard(out, state)
        get_stream_writer()({"event": "story_done", "story_id": state["story_id"], "storyboard": str(storyboard)})
        return {"storyboard": str(storyboard), "manifest": str(manifest)}

    builder = StateGraph(StoryState)
    builder.add_node("start", start)
    builder.add_node("plan", plan)
    builder.add_node("illustrate", illustrate)
    builder.add_node("finish", finish)
    builder.add_edge(START, "start")
    builder.add_edge("start", "plan")
    builder.add_edge("plan", "illustrate")
    builder.add_conditional_edges("illustrate", route)
    builder.add_edge("finish", END)
    graph = builder.compile(checkpointer=checkpointer, name="seedx-story")
    return graph.with_config(recursion_limit=3 * MAX_STORY_STEPS + 10)


# ---------------------------------------------------------------------------------------------- files


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_beat(memory: ImageMemory, out: Path, namespace: str, record: ImageRecord, summary: dict[str, Any]) -> None:
    """Copy the beat's PNG into ``out`` and append its summary to the story log (one JSON line per beat)."""
    out.mkdir(parents=True, exist_ok=True)
    name = f"beat_{summary['step']:03d}.png"
    with memory.load(record.id, namespace=namespace) as picture:
        tmp = out / f".{name}.tmp"
        picture.save(tmp, format="PNG")
        os.replace(tmp, out / name)
    with open(out / STORY_LOG, "a", encoding="utf-8") as log:
        log.write(json.dumps({**summary, "file": name}) + "\n")


def read_log(out: Path, steps: int) -> list[dict[str, Any]]:
    """The finished beats of the story in ``out`` (a re-run beat keeps its latest line)."""
    by_step: dict[int, dict[str, Any]] = {}
    log_path = out / STORY_LOG
    if log_path.is_file():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                by_step[entry["step"]] = entry
    return [by_step[step] for step in sorted(by_step) if step < steps]


def _write_storyboard(out: Path, state: StoryState) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    entries = read_log(out, state["steps"])
    manifest = {
        "premise": state["premise"],
        "story_id": state["story_id"],
        "namespace": state["namespace"],
        "base_seed": state["base_seed"],
        "characters": state.get("characters") or [],
        "beats": entries,
    }
    manifest_path = out / MANIFEST
    _atomic_write(manifest_path, json.dumps(manifest, indent=2))
    cells = []
    for entry in entries:
        verdict = {True: "consistent", False: "check failed", None: "not checked"}[entry["consistent"]]
        cells.append(
            '<figure><img src="{file}" alt="beat {step}"><figcaption><b>{step}.</b> {text}<br>'
            "<small>{mode} &middot; {verdict} &middot; seed {seed}<br>{prompt}</small></figcaption></figure>".format(
                file=html.escape(entry["file"]),
                step=entry["step"] + 1,
                text=html.escape(entry["text"]),
                mode=html.escape(entry["mode"]),
                verdict=verdict,
                seed=entry["seed"],
                prompt=html.escape(entry["instruction"] or entry["picture_prompt"]),
            )
        )
    people = ", ".join(f"{c['name']} ({c['description']})" for c in manifest["characters"])
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>"
        "body{{font-family:sans-serif}} figure{{display:inline-block;width:220px;margin:6px;vertical-align:top}}"
        "img{{width:200px;height:200px;object-fit:contain;image-rendering:pixelated;border:1px solid #ccc}}"
        "</style></head><body><h1>{title}</h1><p>{count} beats &middot; characters: {people} &middot; story "
        "{story_id}, base seed {seed}</p>{cells}</body></html>"
    ).format(
        title=html.escape(state["premise"]),
        count=len(entries),
        people=html.escape(people or "none"),
        story_id=html.escape(state["story_id"]),
        seed=state["base_seed"],
        cells="\n".join(cells),
    )
    path = out / STORYBOARD
    _atomic_write(path, page)
    return path, manifest_path


# ---------------------------------------------------------------------------------------------- langgraph.json


def make_story_graph() -> CompiledStateGraph:
    """Zero-argument factory for ``langgraph.json``: model, memory and planner from the environment (see
    ``runtime``), pictures into ``SEEDX_STORY_OUT`` (default ``outputs/story``)."""
    from seedx_agent.graphs.runtime import planner_from_env, shared_engine_and_memory_from_env

    engine, memory = shared_engine_and_memory_from_env()  # loaded once per process, then shared
    return create_story_graph(
        engine,
        memory,
        planner=planner_from_env(engine, memory),
        out_dir=os.environ.get("SEEDX_STORY_OUT", "outputs/story"),
    )
