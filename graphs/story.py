"""A LangGraph story graph: a premise becomes N illustrated steps around one consistent hero (SEED-Story style).

Each step is planned deterministically in the miniature world's story vocabulary (a hero shape that
``moves``, ``meets``, ``leaves``, ``grows`` or ``shrinks``; seeded by ``base_seed + step``), then illustrated:
the previous step's picture is recalled from memory and *edited* with the step's instruction (the first
step is generated, or edited into a given input image), so the hero stays the same picture by picture.
The model then captions the new picture while looking at the last ``recall_k`` pictures of the story.

Memory discipline, so 25+ steps run in constant memory: the graph state holds only ids and short texts
(never pixels) and a window of the last few steps; every picture lives in the ``ImageMemory`` under the
namespace ``story/<story_id>`` with ``parent_id`` = the previous step's picture; the storyboard
(``storyboard.html`` + ``step_NNN.png``) is appended to ``out_dir`` as steps finish. A step whose picture
is already in memory (same story namespace and seed) is reused, so a resumed run never redoes work.
"""

from __future__ import annotations

import html
import json
import logging
import os
import random
import re
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from seedx_agent.memory import ImageMemory, ImageRecord

from seedx_agent.engine import SeedXEngine
from seedx_agent.errors import ConfigError, InvalidPromptError
from seedx_agent.miniature import world

__all__ = [
    "MAX_STORY_STEPS",
    "RECENT_WINDOW",
    "StoryState",
    "create_story_graph",
    "initial_scene",
    "make_story_graph",
    "plan_beat",
    "scene_from_dict",
    "scene_to_dict",
]

logger = logging.getLogger(__name__)

MAX_STORY_STEPS = 500
RECENT_WINDOW = 8  # steps kept in the graph state; older ones live only in memory and on disk
STORY_LOG = "story.jsonl"
STORYBOARD = "storyboard.html"


# ---------------------------------------------------------------------------------------------- planning


def scene_to_dict(scene: world.Scene) -> dict[str, Any]:
    """A JSON-friendly copy of a world scene (what the state and checkpoints hold)."""
    return {
        "shapes": [[s.kind, s.colour, s.size, s.cell[0], s.cell[1]] for s in scene.shapes],
        "character": scene.character,
    }


def scene_from_dict(data: dict[str, Any]) -> world.Scene:
    """The inverse of ``scene_to_dict``."""
    shapes = tuple(world.Shape(kind, colour, size, (row, col)) for kind, colour, size, row, col in data["shapes"])
    return world.Scene(shapes=shapes, character=data.get("character"))


def _object_phrase(shape: world.Shape) -> str:
    return f"{shape.phrase()} {world.POSITION_PHRASES[shape.position]}"


def initial_scene(premise: str, seed: int) -> world.Scene:
    """The opening scene: a hero whose kind/colour/size/position are read from the premise when it names them.

    Whatever the premise leaves open comes from the world's ``story()`` sampler seeded with ``seed``.
    """
    sampled = world.story(random.Random(seed), 1).hero
    words = world.text_words(premise)
    singular = {kind + "s": kind for kind in world.KINDS}
    kind = next((singular.get(w, w) for w in words if singular.get(w, w) in world.KINDS), sampled.kind)
    colour = next((w for w in words if w in world.COLOURS), sampled.colour)
    size = next((w for w in words if w in world.SIZES), sampled.size)
    text = " ".join(words)
    cell = sampled.cell
    for position in sorted(world.POSITIONS, key=len, reverse=True):  # "top left" before "top"
        if re.search(rf"\b{position}\b", text):
            cell = world.cell_of_position(position)
            break
    return world.Scene(shapes=(world.Shape(kind, colour, size, cell),), character=0)


def plan_beat(scene: world.Scene, step: int, seed: int, *, has_source_image: bool) -> dict[str, Any]:
    """The beat of ``step``: story sentence, the model instruction/prompt that illustrates it, the next scene.

    Step 0 introduces the hero (``generate`` its description, or ``edit`` an input image with "add ...").
    Later steps follow ``world.story``'s rules with ``random.Random(seed)``: the hero moves, grows or
    shrinks, meets a new shape next to it, or another shape leaves; the instruction uses the world's edit
    templates ("move the red circle to the top", "make ... large", "add ...", "remove ...").
    """
    hero = scene.shapes[0]
    hero_name = f"the {hero.colour} {hero.kind}"
    if step == 0:
        sentence = f"there is {_object_phrase(hero)}"
        if has_source_image:
            return _beat("edit", sentence, f"add {_object_phrase(hero)}", scene)
        return _beat("generate", sentence, world.describe(scene), scene)
    rng = random.Random(seed)
    free = scene.free_cells()
    meet_cells = [cell for cell in _neighbour_cells(hero.cell) if cell in free]
    actions = ["move", "resize"] if free else ["resize"]
    if meet_cells and len(scene.shapes) < world.MAX_SHAPES:
        actions.append("meet")
    if len(scene.shapes) > 1:
        actions.append("leave")
    action = rng.choice(actions)
    hero_ref = world.referring_phrase(scene, 0)
    if action == "move":
        moved = replace(hero, cell=rng.choice(free))
        return _beat(
            "edit",
            f"{hero_name} moves to the {moved.position}",
            f"move {hero_ref} to the {moved.position}",
            scene.replace_shape(0, moved),
        )
    if action == "resize":
        grows = hero.size == "small"
        size = "large" if grows else "small"
        return _beat(
            "edit",
            f"{hero_name} {'grows' if grows else 'shrinks'}",
            f"make {hero_ref} {size}",
            scene.replace_shape(0, replace(hero, size=size)),
        )
    if action == "meet":
        taken = {(s.colour, s.kind) for s in scene.shapes}
        options = [(c, k) for c in world.COLOURS for k in world.KINDS if (c, k) not in taken]
        colour, kind = rng.choice(options)
        friend = world.Shape(kind, colour, rng.choice(world.SIZES), rng.choice(meet_cells))
        phrase = _object_phrase(friend)
        return _beat("edit", f"{hero_name} meets {phrase}", f"add {phrase}", scene.add_shape(friend))
    index = rng.randrange(1, len(scene.shapes))
    leaving = scene.shapes[index]
    return _beat(
        "edit",
        f"the {leaving.colour} {leaving.kind} leaves",
        f"remove {world.referring_phrase(scene, index)}",
        scene.remove_shape(index),
    )


def _beat(operation: str, sentence: str, instruction: str, scene: world.Scene) -> dict[str, Any]:
    return {"operation": operation, "sentence": sentence, "instruction": instruction, "scene": scene_to_dict(scene)}


def _neighbour_cells(cell: tuple[int, int]) -> list[tuple[int, int]]:
    row, col = cell
    moves = ((-1, 0), (1, 0), (0, -1), (0, 1))
    return [(row + dr, col + dc) for dr, dc in moves if 0 <= row + dr < world.GRID and 0 <= col + dc < world.GRID]


# ---------------------------------------------------------------------------------------------- state


def _keep_recent(left: list[dict[str, Any]] | None, right: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Reducer: append the new step summaries and keep only the last ``RECENT_WINDOW`` (bounded state)."""
    return [*(left or []), *(right or [])][-RECENT_WINDOW:]


class StoryState(TypedDict, total=False):
    """Ids and short texts only; pixels live in the image memory."""

    premise: str
    input_image_ids: list[str]
    story_id: str
    base_seed: int
    steps: int
    namespace: str
    step: int  # the next step to illustrate
    scene: dict[str, Any]  # the world scene after the last illustrated step (<= 3 shapes)
    beat: dict[str, Any] | None  # the planned, not yet illustrated step
    recent: Annotated[list[dict[str, Any]], _keep_recent]  # summaries of the last RECENT_WINDOW steps
    storyboard: str | None


# ---------------------------------------------------------------------------------------------- the graph


def create_story_graph(
    engine: SeedXEngine,
    memory: ImageMemory,
    *,
    steps: int = 25,
    out_dir: str | Path = "outputs/story",
    recall_k: int = 2,
    num_inference_steps: int | None = None,
    checkpointer: BaseCheckpointSaver | None = None,
) -> CompiledStateGraph:
    """A compiled story graph. Input: ``{"premise": str}`` plus optional ``input_image_ids``, ``steps``,
    ``base_seed`` (default 0) and ``story_id``; output state holds ``story_id``, ``namespace``, ``recent`` and
    the ``storyboard`` path.

    ``recall_k`` pictures (the newest ones) are recalled from memory as the caption's context;
    ``num_inference_steps`` overrides the de-tokenizer's diffusion steps (``None``: the model default).
    Invoke with ``durability="sync"`` to have each finished step checkpointed before the next starts.
    """
    _check_steps(steps, "steps")
    if isinstance(recall_k, bool) or not isinstance(recall_k, int) or not 1 <= recall_k <= RECENT_WINDOW:
        raise ConfigError(f"recall_k must be an int in [1, {RECENT_WINDOW}], got {recall_k!r}")
    out = Path(out_dir)
    model_name = engine.model.config.name
    render_kwargs: dict[str, Any] = {}
    if num_inference_steps is not None:
        render_kwargs["num_inference_steps"] = num_inference_steps

    def start(state: StoryState) -> dict[str, Any]:
        premise = state.get("premise")
        if not isinstance(premise, str) or not premise.strip():
            raise InvalidPromptError(f"premise must be a non-empty string, got {premise!r}; e.g. 'a red circle'")
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
        out.mkdir(parents=True, exist_ok=True)
        get_stream_writer()({"event": "story_start", "story_id": story_id, "steps": total, "namespace": namespace})
        return {
            "premise": premise.strip(),
            "input_image_ids": input_ids,
            "story_id": story_id,
            "namespace": namespace,
            "base_seed": base_seed,
            "steps": total,
            "step": 0,
            "scene": scene_to_dict(initial_scene(premise, base_seed)),
            "beat": None,
            "storyboard": None,
        }

    def plan(state: StoryState) -> dict[str, Any]:
        step = state["step"]
        has_source = step > 0 or bool(state["input_image_ids"])
        beat = plan_beat(scene_from_dict(state["scene"]), step, state["base_seed"] + step, has_source_image=has_source)
        return {"beat": beat}

    def illustrate(state: StoryState) -> dict[str, Any]:
        step, beat, namespace = state["step"], state["beat"], state["namespace"]
        seed = state["base_seed"] + step
        recent = state.get("recent") or []
        previous_ids = [item["image_id"] for item in recent] or state["input_image_ids"][-1:]
        source_id = previous_ids[-1] if previous_ids and beat["operation"] == "edit" else None
        done = memory.find({"seed": seed}, namespace=namespace, limit=1)  # resumed after a crash mid-step
        if done:
            record = done[0]
            logger.info("story %s step %d already in memory as %s; reusing it", namespace, step, record.id)
        else:
            context_ids = previous_ids[-(recall_k - 1) :] if recall_k > 1 else []
            record = _illustrate(beat, seed, namespace, source_id, context_ids)
        summary = {
            "step": step,
            "image_id": record.id,
            "parent_id": record.parent_id,
            "seed": seed,
            "operation": beat["operation"],
            "sentence": beat["sentence"],
            "instruction": beat["instruction"],
            "caption": record.caption or "",
        }
        _write_step(memory, out, record, summary)
        get_stream_writer()({"event": "story_step", "steps": state["steps"], **summary})
        return {"recent": [summary], "scene": beat["scene"], "beat": None, "step": step + 1}

    def _illustrate(
        beat: dict[str, Any], seed: int, namespace: str, source_id: str | None, context_ids: list[str]
    ) -> ImageRecord:
        if source_id is not None:
            source = memory.load(source_id)
            result = engine.edit_image(source, beat["instruction"], seed=seed, **render_kwargs)
            kind = "edited"
        else:
            result = engine.generate_image(beat["instruction"], seed=seed, **render_kwargs)
            kind = "generated"
        picture = result.image
        context = [memory.load(image_id) for image_id in context_ids]  # the story so far, newest last
        caption = engine.comprehend([*context, picture], world.CAPTION_QUESTION).text.strip()
        return memory.add(
            picture,
            kind=kind,
            namespace=namespace,
            prompt=beat["instruction"],
            caption=caption or None,
            parent_id=source_id,
            operation=f"story-{beat['operation']}",
            seed=seed,
            model=model_name,
        )

    def route(state: StoryState) -> Literal["plan", "storyboard"]:
        return "plan" if state["step"] < state["steps"] else "storyboard"

    def storyboard(state: StoryState) -> dict[str, Any]:
        path = _write_storyboard(out, state)
        get_stream_writer()({"event": "story_done", "story_id": state["story_id"], "storyboard": str(path)})
        return {"storyboard": str(path)}

    builder = StateGraph(StoryState)
    builder.add_node("start", start)
    builder.add_node("plan", plan)
    builder.add_node("illustrate", illustrate)
    builder.add_node("storyboard", storyboard)
    builder.add_edge(START, "start")
    builder.add_edge("start", "plan")
    builder.add_edge("plan", "illustrate")
    builder.add_conditional_edges("illustrate", route)
    builder.add_edge("storyboard", END)
    graph = builder.compile(checkpointer=checkpointer, name="seedx-story")
    return graph.with_config(recursion_limit=2 * MAX_STORY_STEPS + 10)


def _check_steps(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_STORY_STEPS:
        raise ConfigError(f"{name} must be an int in [1, {MAX_STORY_STEPS}], got {value!r}")


# ---------------------------------------------------------------------------------------------- storyboard


def _write_step(memory: ImageMemory, out: Path, record: ImageRecord, summary: dict[str, Any]) -> None:
    """Copy the step's PNG into ``out`` and append its summary to the story log (one JSON line per step)."""
    name = f"step_{summary['step']:03d}.png"
    with memory.load(record.id) as picture:
        picture.save(out / name)
    with open(out / STORY_LOG, "a", encoding="utf-8") as log:
        log.write(json.dumps({**summary, "file": name}) + "\n")


def _read_log(out: Path, steps: int) -> list[dict[str, Any]]:
    by_step: dict[int, dict[str, Any]] = {}
    log_path = out / STORY_LOG
    if log_path.is_file():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                by_step[entry["step"]] = entry  # a re-run step keeps its latest line
    return [by_step[step] for step in sorted(by_step) if step < steps]


def _write_storyboard(out: Path, state: StoryState) -> Path:
    entries = _read_log(out, state["steps"])
    cells = []
    for entry in entries:
        cells.append(
            '<figure><img src="{file}" alt="step {step}"><figcaption><b>{step}.</b> {sentence}<br>'
            "<small>model: {caption}<br>{operation} &middot; seed {seed} &middot; {image_id}</small>"
            "</figcaption></figure>".format(**{key: html.escape(str(value)) for key, value in entry.items()})
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>"
        "body{{font-family:sans-serif}} figure{{display:inline-block;width:180px;margin:6px;vertical-align:top}}"
        "img{{width:160px;height:160px;image-rendering:pixelated;border:1px solid #ccc}}</style></head>"
        "<body><h1>{title}</h1><p>story {story_id}, base seed {seed}, {count} steps</p>{cells}</body></html>"
    ).format(
        title=html.escape(state["premise"]),
        story_id=html.escape(state["story_id"]),
        seed=state["base_seed"],
        count=len(entries),
        cells="\n".join(cells),
    )
    path = out / STORYBOARD
    path.write_text(page, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- langgraph.json


def make_story_graph() -> CompiledStateGraph:
    """Zero-argument factory for ``langgraph.json``: settings from the environment (see
    ``runtime.engine_and_memory_from_env``), pictures into ``SEEDX_STORY_OUT`` (default ``outputs/story``)."""
    from .runtime import engine_and_memory_from_env

    engine, memory = engine_and_memory_from_env()
    return create_story_graph(engine, memory, out_dir=os.environ.get("SEEDX_STORY_OUT", "outputs/story"))
