"""The miniature world's planner: the story, slides and refine schemas filled in without a language model.

``WorldPlanner`` is the plug-in ``--model mini`` wires into the workflows (``--planner world``). It speaks the
same ``seedx_agent.graphs.planning`` schemas as any chat-model planner, but plans in the world's vocabulary
(shapes, colours, sizes, 3x3 positions), deterministically from the request's text and seed, and writes
checks the 14M-parameter miniature was trained to answer (its VQA questions and grounding phrases). So a
CPU demo's pictures can be judged exactly, while the workflows themselves stay open-vocabulary.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from typing import Any, TypeVar

from pydantic import BaseModel

from seedx_agent.errors import InvalidPromptError
from seedx_agent.graphs.planning import (
    Character,
    Check,
    EditFix,
    PlannerOutputError,
    PlanTask,
    RefinePlan,
    SlideOutline,
    SlideSpec,
    StoryBeat,
    StoryChunk,
)
from seedx_agent.miniature import world

__all__ = ["HERO", "WorldPlanner", "initial_scene", "parse_request", "plan_beat", "world_fix"]

M = TypeVar("M", bound=BaseModel)
HERO = "hero"
_PLURAL_KINDS = {kind + "s": kind for kind in world.KINDS}
_POSITION_SYNONYMS = {"centre": "center", "middle": "center"}
_POSITIONS_LONGEST_FIRST = sorted(world.POSITIONS, key=len, reverse=True)  # "top left" before "top"
# A world position as a region of the generic checks (the world's "top" is the top-middle cell).
REGION_OF_POSITION = {
    "top": "top center",
    "bottom": "bottom center",
    "left": "center left",
    "right": "center right",
    "center": "center",
}


def _region(position: str) -> str:
    return REGION_OF_POSITION.get(position, position)


def _find_position(text: str) -> str | None:
    for name in _POSITIONS_LONGEST_FIRST:
        if re.search(rf"\b{name}\b", text):
            return name
    return None


# ---------------------------------------------------------------------------------------------- story


def initial_scene(premise: str, seed: int) -> world.Scene:
    """The opening scene: a hero whose kind/colour/size/position are read from the premise when it names them;
    whatever the premise leaves open comes from the world's ``story()`` sampler seeded with ``seed``."""
    sampled = world.story(random.Random(seed), 1).hero
    words = world.text_words(premise)
    kind = next((_PLURAL_KINDS.get(w, w) for w in words if _PLURAL_KINDS.get(w, w) in world.KINDS), sampled.kind)
    colour = next((w for w in words if w in world.COLOURS), sampled.colour)
    size = next((w for w in words if w in world.SIZES), sampled.size)
    position = _find_position(" ".join(words))
    cell = world.cell_of_position(position) if position else sampled.cell
    return world.Scene(shapes=(world.Shape(kind, colour, size, cell),), character=0)


def _object_phrase(shape: world.Shape) -> str:
    return f"{shape.phrase()} {world.POSITION_PHRASES[shape.position]}"


def _neighbour_cells(cell: tuple[int, int]) -> list[tuple[int, int]]:
    row, col = cell
    moves = ((-1, 0), (1, 0), (0, -1), (0, 1))
    return [(row + dr, col + dc) for dr, dc in moves if 0 <= row + dr < world.GRID and 0 <= col + dc < world.GRID]


def plan_beat(scene: world.Scene, step: int, seed: int, *, has_source_image: bool) -> dict[str, Any]:
    """Beat ``step`` in world terms: ``operation`` (generate/edit), ``sentence``, ``instruction``, next ``scene``.

    Step 0 introduces the hero (generated from its description, or added to an input image). Later steps
    follow ``world.story``'s rules with ``random.Random(seed)``: the hero moves, grows or shrinks, meets a new
    shape next to it, or another shape leaves; the instruction uses the world's edit templates.
    """
    hero = scene.shapes[0]
    hero_name = f"the {hero.colour} {hero.kind}"
    if step == 0:
        sentence = f"there is {_object_phrase(hero)}"
        if has_source_image:
            return {
                "operation": "edit",
                "sentence": sentence,
                "instruction": f"add {_object_phrase(hero)}",
                "scene": scene,
            }
        return {"operation": "generate", "sentence": sentence, "instruction": world.describe(scene), "scene": scene}
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
        sentence, instruction = f"{hero_name} moves to the {moved.position}", f"move {hero_ref} to the {moved.position}"
        return {
            "operation": "edit",
            "sentence": sentence,
            "instruction": instruction,
            "scene": scene.replace_shape(0, moved),
        }
    if action == "resize":
        grows = hero.size == "small"
        size = "large" if grows else "small"
        return {
            "operation": "edit",
            "sentence": f"{hero_name} {'grows' if grows else 'shrinks'}",
            "instruction": f"make {hero_ref} {size}",
            "scene": scene.replace_shape(0, replace(hero, size=size)),
        }
    if action == "meet":
        taken = {(s.colour, s.kind) for s in scene.shapes}
        options = [(c, k) for c in world.COLOURS for k in world.KINDS if (c, k) not in taken]
        colour, kind = rng.choice(options)
        friend = world.Shape(kind, colour, rng.choice(world.SIZES), rng.choice(meet_cells))
        phrase = _object_phrase(friend)
        return {
            "operation": "edit",
            "sentence": f"{hero_name} meets {phrase}",
            "instruction": f"add {phrase}",
            "scene": scene.add_shape(friend),
        }
    index = rng.randrange(1, len(scene.shapes))
    leaving = scene.shapes[index]
    return {
        "operation": "edit",
        "sentence": f"the {leaving.colour} {leaving.kind} leaves",
        "instruction": f"remove {world.referring_phrase(scene, index)}",
        "scene": scene.remove_shape(index),
    }


def _shape_checks(scene: world.Scene, index: int) -> list[Check]:
    """Questions the miniature answers about one shape: its kind by colour and its colour by kind, when unique."""
    shape = scene.shapes[index]
    others = [s for i, s in enumerate(scene.shapes) if i != index]
    checks = []
    if all(s.colour != shape.colour for s in others):
        checks.append(
            Check(kind="ask", query=f"what shape is {shape.colour}?", expect=shape.kind, tag=f"{index}:shape")
        )
    if all(s.kind != shape.kind for s in others):
        checks.append(
            Check(kind="ask", query=f"what colour is the {shape.kind}?", expect=shape.colour, tag=f"{index}:colour")
        )
    return checks


def _story_beats(request: dict[str, Any]) -> StoryChunk:
    premise, seed = str(request.get("premise", "")), int(request.get("seed", 0))
    first, count = int(request.get("first_beat", 0)), int(request.get("count", 1))
    scene = initial_scene(premise, seed)
    beats = []
    for step in range(first + count):
        has_source = step > 0 or bool(request.get("has_input_image"))
        planned = plan_beat(scene, step, seed + step, has_source_image=has_source)
        scene = planned["scene"]
        if step < first:
            continue
        beats.append(
            StoryBeat(
                text=planned["sentence"],
                picture_prompt=world.describe(scene),
                characters=[HERO],
                same_scene=planned["operation"] == "edit",
                edit_instruction=planned["instruction"] if planned["operation"] == "edit" else None,
                checks=_shape_checks(scene, 0),
            )
        )
    hero = initial_scene(premise, seed).shapes[0]
    characters = [] if first else [Character(name=HERO, description=hero.phrase())]
    return StoryChunk(characters=characters, beats=beats)


# ---------------------------------------------------------------------------------------------- refine


def parse_request(request: str) -> list[dict[str, str]]:
    """Checkable facts per object ("and"/","-separated) in the world's vocabulary; ``InvalidPromptError`` if none."""
    if not isinstance(request, str) or not request.strip():
        raise InvalidPromptError(f"the refine request is empty ({request!r}); describe the picture to make")
    objects: list[dict[str, str]] = []
    for chunk in re.split(r"\band\b|,", request.lower()):
        words = [_POSITION_SYNONYMS.get(word, word) for word in world.text_words(chunk)]
        facts: dict[str, str] = {}
        for word in words:
            kind = _PLURAL_KINDS.get(word, word)
            if kind in world.KINDS and "kind" not in facts:
                facts["kind"] = kind
            elif word in world.COLOURS and "colour" not in facts:
                facts["colour"] = word
            elif word in world.SIZES and "size" not in facts:
                facts["size"] = word
        position = _find_position(" ".join(words))
        if position is not None:
            facts["position"] = position
        if facts.get("kind") or facts.get("colour"):  # a position alone names no object
            objects.append(facts)
    if not objects:
        raise InvalidPromptError(
            f"the world planner finds nothing to check in {request!r}: name a shape ({', '.join(world.KINDS)}) or "
            f"a colour ({', '.join(world.COLOURS)}), optionally a size and a position such as 'top left'; or use "
            "an open-vocabulary planner (--planner seedx or module:attr)"
        )
    return objects


def _referring(facts: dict[str, str], *, colour: str | None = None) -> str:
    colour = colour or facts.get("colour")
    return "the " + " ".join(part for part in (colour, facts.get("kind") or "shape") if part)


def _indefinite(facts: dict[str, str]) -> str:
    phrase = " ".join(w for w in (facts.get("size"), facts.get("colour"), facts.get("kind") or "shape") if w)
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _refine_checks(request: dict[str, Any]) -> RefinePlan:
    text = str(request.get("request", ""))
    checks: list[Check] = []
    for index, facts in enumerate(parse_request(text)):
        kind, colour, size, position = (facts.get(key) for key in ("kind", "colour", "size", "position"))
        where = world.POSITION_PHRASES[position] if position else None
        if kind and (colour or where):
            question = f"what shape is {colour}?" if colour else f"what shape is {where}?"
            checks.append(Check(kind="ask", query=question, expect=kind, tag=f"{index}:shape"))
        if colour and (kind or where):
            question = f"what colour is the {kind}?" if kind else f"what colour is the shape {where}?"
            checks.append(Check(kind="ask", query=question, expect=colour, tag=f"{index}:colour"))
        if size:
            checks.append(
                Check(kind="ask", query=f"what size is {_referring(facts)}?", expect=size, tag=f"{index}:size")
            )
        if position:
            checks.append(
                Check(kind="ground", query=_referring(facts), expect=_region(position), tag=f"{index}:position")
            )
    return RefinePlan(prompt=text.strip(), checks=checks)


def world_fix(objects: list[dict[str, str]], failed: list[dict[str, Any]]) -> str:
    """One world-style edit instruction for the first failed check (tags ``"<object>:<attribute>"``)."""
    first = failed[0]
    index, attribute = str(first.get("tag") or "0:shape").split(":", 1)
    facts = objects[int(index)]
    failed_here = {
        str(c.get("tag", "")).split(":", 1)[-1] for c in failed if str(c.get("tag", "")).startswith(f"{index}:")
    }
    where = f" {world.POSITION_PHRASES[facts['position']]}" if facts.get("position") else ""
    if "shape" in failed_here or ("colour" in failed_here and "position" in failed_here):
        return f"add {_indefinite(facts)}{where}"  # the object is not there: add it
    observed = first.get("observed")
    if attribute == "colour":
        seen = next((w for w in world.text_words(str(observed or "")) if w in world.COLOURS), None)
        target = f"the {seen} {facts['kind']}" if seen and facts.get("kind") else _referring(facts, colour=seen)
        return f"make {target} {facts['colour']}"
    if attribute == "size":
        return f"make {_referring(facts)} {facts['size']}"
    if observed is None:  # position: the object was not found at all
        return f"add {_indefinite(facts)}{where}"
    return f"move {_referring(facts)} to the {facts['position']}"


def _fix(request: dict[str, Any]) -> EditFix:
    failed = [c for c in request.get("failed", []) if isinstance(c, dict)]
    if not failed:
        raise PlannerOutputError("the world planner was asked for a fix without a failed check")
    tag = str(failed[0].get("tag") or "")
    if tag.startswith("slide:"):  # slides: a shape grounded elsewhere is moved; a missing one means redraw
        _, phrase, position = tag.split(":", 2)
        if failed[0].get("boxes"):
            return EditFix(action="edit", instruction=f"move {phrase} to the {position}")
        return EditFix(action="regenerate", instruction=str(request.get("picture_prompt", "")))
    objects = parse_request(str(request.get("request", "")))
    return EditFix(action="edit", instruction=world_fix(objects, failed))


# ---------------------------------------------------------------------------------------------- slides


def _shape_bullets(scene: world.Scene) -> list[str]:
    return [_object_phrase(shape) for shape in scene.shapes]


def _slide_checks(scene: world.Scene) -> list[Check]:
    return [
        Check(
            kind="ground",
            query=world.referring_phrase(scene, i),
            expect=_region(shape.position),
            tag=f"slide:{world.referring_phrase(scene, i)}:{shape.position}",
        )
        for i, shape in enumerate(scene.shapes)
    ]


def _slides_outline(request: dict[str, Any]) -> SlideOutline:
    """Slide 0 shows a scene read from the topic; each next slide applies one world edit and says what changed."""
    topic, count, seed = (
        str(request.get("topic", "")).strip(),
        int(request.get("n_slides", 1)),
        int(request.get("seed", 0)),
    )
    rng = random.Random(seed)
    scene = world.Scene(shapes=initial_scene(topic, seed).shapes)  # a deck has no story hero
    slides = [
        SlideSpec(
            title=topic,
            bullets=_shape_bullets(scene),
            layout="title",
            picture_prompt=world.describe(scene),
            notes=f"The opening scene: {world.describe(scene)}.",
            checks=_slide_checks(scene),
        )
    ]
    layouts = ("picture_right", "picture_left")
    for index in range(1, count):
        sample = world.edit(scene, rng)
        scene = sample.target
        slides.append(
            SlideSpec(
                title=f"{topic}: {world.TITLE_WORDS[(index - 1) % len(world.TITLE_WORDS)]}",
                bullets=_shape_bullets(scene),
                layout=layouts[(index - 1) % 2],
                picture_prompt=world.describe(scene),
                notes=f"What changed since the previous slide: {sample.instruction}.",
                recall_query=world.describe(sample.source),
                edit_instruction=sample.instruction,
                checks=_slide_checks(scene),
            )
        )
    return SlideOutline(slides=slides)


# ---------------------------------------------------------------------------------------------- the planner


class WorldPlanner:
    """A ``StructuredPlanner`` for the miniature world (deterministic; no language model)."""

    def plan(self, task: PlanTask, schema: type[M], request: dict[str, Any]) -> M:
        """Fill in ``schema`` for ``task`` from the request's text and seed, in the world's vocabulary."""
        makers = {
            "story_beats": _story_beats,
            "slides_outline": _slides_outline,
            "refine_checks": _refine_checks,
            "fix": _fix,
        }
        if task not in makers:
            raise PlannerOutputError(f"the world planner has no plan for task {task!r}")
        plan = makers[task](request)
        if not isinstance(plan, schema):
            raise PlannerOutputError(
                f"task {task!r} gives a {type(plan).__name__}, not the {schema.__name__} asked for"
            )
        return plan  # type: ignore[return-value]
