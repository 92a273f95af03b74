"""A LangGraph slides graph: topic -> outline -> illustrations -> critique/refine loop -> ``.pptx`` + PNG previews.

The outline comes from a deterministic planner (``plan_outline``: slides about a scene of the miniature
world that changes by one world edit per slide) or from any LangChain chat model passed as ``planner``
that answers with JSON. Each slide's picture is generated, or, when memory already holds a picture of the
slide's starting point (found by text search), recalled and edited. The model then critiques each picture
with grounding (is every planned shape where the slide says?) or, for free-form slides, with a caption
whose words are compared to the slide's prompt; failing pictures are refined (moved by an edit, or
regenerated with a new seed) up to ``max_refine`` times. The deck is written last, with the final pictures.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import secrets
from pathlib import Path
from typing import Any, Literal, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from seedx_agent.memory import ImageMemory, ImageRecord

from seedx_agent.engine import SeedXEngine
from seedx_agent.errors import ConfigError, DependencyMissingError, InvalidPromptError
from seedx_agent.miniature import world

from .runtime import engine_and_memory_from_env
from .story import initial_scene, scene_from_dict, scene_to_dict

__all__ = [
    "LAYOUTS",
    "MAX_SLIDES",
    "SlidePlan",
    "SlidesState",
    "create_slides_graph",
    "make_slides_graph",
    "plan_outline",
    "write_deck",
]

logger = logging.getLogger(__name__)

MAX_SLIDES = 50
LAYOUTS: tuple[str, ...] = ("title", "picture_right", "picture_left")
PICTURE_PIXELS = 512  # pictures are upscaled (nearest) to this size for the deck and previews
PREVIEW_SIZE = (960, 540)
GROUNDING_IOU = 0.3  # a grounded box counts as the planned shape when it overlaps the planned box this much
_STOP_WORDS = frozenset("a an the and with on at in of to is are there".split())


class SlidePlan(BaseModel):
    """One planned slide: what the deck shows and what its picture must contain."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1)
    bullets: list[str] = Field(default_factory=list, max_length=8)
    layout: Literal["title", "picture_right", "picture_left"] = "picture_right"
    image_prompt: str = Field(min_length=1, description="what the picture shows (generation prompt)")
    source_prompt: str | None = Field(default=None, description="a stored picture to recall and edit, by text")
    instruction: str | None = Field(default=None, description="the edit turning the recalled picture into this one")
    scene: dict[str, Any] | None = Field(default=None, description="the planned world scene, for grounding critique")


class _PlannerAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slides: list[SlidePlan]


# ---------------------------------------------------------------------------------------------- planning


def plan_outline(topic: str, n_slides: int, *, seed: int = 0) -> list[SlidePlan]:
    """Deterministic outline: slide 0 introduces a world scene read from the topic (``story.initial_scene``);
    each next slide applies one world edit (``world.edit`` with ``random.Random(seed)``) and says what changed.

    Titles are the topic plus a world title word; bullets describe every shape; layouts alternate.
    """
    _check_count(n_slides)
    rng = random.Random(seed)
    scene = initial_scene(topic, seed)
    scene = world.Scene(shapes=scene.shapes)  # a deck has no story hero
    slides = [
        SlidePlan(
            title=topic.strip(),
            bullets=_shape_bullets(scene),
            layout="title",
            image_prompt=world.describe(scene),
            scene=scene_to_dict(scene),
        )
    ]
    for index in range(1, n_slides):
        sample = world.edit(scene, rng)
        scene = sample.target
        slides.append(
            SlidePlan(
                title=f"{topic.strip()}: {world.TITLE_WORDS[(index - 1) % len(world.TITLE_WORDS)]}",
                bullets=[sample.instruction, *_shape_bullets(scene)],
                layout=LAYOUTS[1 + (index - 1) % 2],
                image_prompt=world.describe(scene),
                source_prompt=world.describe(sample.source),
                instruction=sample.instruction,
                scene=scene_to_dict(scene),
            )
        )
    return slides


def _shape_bullets(scene: world.Scene) -> list[str]:
    return [f"{shape.phrase()} {world.POSITION_PHRASES[shape.position]}" for shape in scene.shapes]


def _check_count(n_slides: object) -> None:
    if isinstance(n_slides, bool) or not isinstance(n_slides, int) or not 1 <= n_slides <= MAX_SLIDES:
        raise ConfigError(f"n_slides must be an int in [1, {MAX_SLIDES}], got {n_slides!r}")


_PLANNER_SYSTEM = (
    'You plan slide decks. Answer with JSON only: {"slides": [{"title": str, "bullets": [str], '
    '"layout": "title"|"picture_right"|"picture_left", "image_prompt": str}]}. '
    "image_prompt describes the slide's picture in a short sentence."
)


def _plan_with_model(planner: BaseChatModel, topic: str, n_slides: int) -> list[SlidePlan]:
    """Ask a chat model for the outline as JSON; a malformed answer raises ``ConfigError`` quoting it."""
    answer = planner.invoke(
        [SystemMessage(_PLANNER_SYSTEM), HumanMessage(f"Topic: {topic}\nNumber of slides: {n_slides}")]
    )
    text = answer.content if isinstance(answer.content, str) else json.dumps(answer.content)
    match = re.search(r"\{.*\}", text, re.S)
    try:
        slides = _PlannerAnswer.model_validate_json(match.group(0) if match else text).slides
    except ValidationError as error:
        raise ConfigError(
            f"the planner's answer is not the expected slides JSON ({error.error_count()} problem(s): "
            f"{error.errors(include_url=False)[0]['msg']}); answer was {text[:200]!r}. Use a model that follows "
            "JSON instructions, or leave planner=None for the deterministic planner"
        ) from error
    if len(slides) != n_slides:
        raise ConfigError(
            f"the planner returned {len(slides)} slides, {n_slides} were asked for; answer: {text[:200]!r}"
        )
    return [slide.model_copy(update={"source_prompt": None, "instruction": None, "scene": None}) for slide in slides]


# ---------------------------------------------------------------------------------------------- state


class SlidesState(TypedDict, total=False):
    """Texts and ids only; pictures live in the image memory."""

    topic: str
    n_slides: int
    deck_id: str
    namespace: str
    base_seed: int
    slides: list[dict[str, Any]]  # SlidePlan fields + image_id, attempts, passed, critiques, mode
    pptx: str | None
    previews: list[str]


# ---------------------------------------------------------------------------------------------- the graph


def create_slides_graph(
    engine: SeedXEngine,
    memory: ImageMemory,
    *,
    out_dir: str | Path,
    max_refine: int = 2,
    n_slides: int = 4,
    planner: BaseChatModel | None = None,
    recall_namespace: str = "slides",
    recall_score: float = 0.8,
    pass_score: float = 1.0,
    num_inference_steps: int | None = None,
    checkpointer: BaseCheckpointSaver | None = None,
) -> CompiledStateGraph:
    """A compiled slides graph. Input ``{"topic": str}`` plus optional ``n_slides``, ``base_seed``, ``deck_id``;
    output state holds ``slides`` (with critiques), ``pptx`` and ``previews`` paths.

    Pictures are recalled by text from ``recall_namespace`` when the best hit scores ``>= recall_score``;
    a picture passes the critique when its score (fraction of planned shapes grounded in place, or of
    prompt words in the caption) is ``>= pass_score``; at most ``max_refine`` refinements per slide.
    """
    if isinstance(max_refine, bool) or not isinstance(max_refine, int) or max_refine < 0:
        raise ConfigError(f"max_refine must be a non-negative int, got {max_refine!r}")
    _check_count(n_slides)
    for name, value in (("recall_score", recall_score), ("pass_score", pass_score)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {value!r}")
    out = Path(out_dir)
    model_name = engine.model.config.name
    render: dict[str, Any] = {} if num_inference_steps is None else {"num_inference_steps": num_inference_steps}

    def outline(state: SlidesState) -> dict[str, Any]:
        topic = state.get("topic")
        if not isinstance(topic, str) or not topic.strip():
            raise InvalidPromptError(f"topic must be a non-empty string, got {topic!r}; e.g. 'shapes and colours'")
        count = state.get("n_slides", n_slides)
        _check_count(count)
        seed = state.get("base_seed", 0)
        plans = _plan_with_model(planner, topic, count) if planner else plan_outline(topic, count, seed=seed)
        deck_id = state.get("deck_id") or f"deck-{secrets.token_hex(4)}"
        get_stream_writer()({"event": "slides_outline", "deck_id": deck_id, "titles": [p.title for p in plans]})
        slides = [
            {**plan.model_dump(), "image_id": None, "attempts": 0, "passed": False, "critiques": [], "mode": None}
            for plan in plans
        ]
        return {
            "topic": topic.strip(),
            "n_slides": count,
            "deck_id": deck_id,
            "namespace": f"{recall_namespace}/{deck_id}",
            "base_seed": seed,
            "slides": slides,
        }

    def illustrate(state: SlidesState) -> dict[str, Any]:
        slides = [dict(slide) for slide in state["slides"]]
        writer = get_stream_writer()
        for index, slide in enumerate(slides):
            if slide["image_id"] is not None:
                continue  # resumed run: already illustrated
            seed = state["base_seed"] + index
            record = _recall_and_edit(slide, seed, state["namespace"])
            slide["mode"] = "recalled+edited" if record is not None else "generated"
            if record is None:
                result = engine.generate_image(slide["image_prompt"], seed=seed, **render)
                record = _store(result.image, "generated", state["namespace"], slide["image_prompt"], None, seed)
            slide["image_id"] = record.id
            writer({"event": "slide_picture", "slide": index, "image_id": record.id, "mode": slide["mode"]})
        return {"slides": slides}

    def _recall_and_edit(slide: dict[str, Any], seed: int, namespace: str) -> ImageRecord | None:
        if not slide["source_prompt"] or not slide["instruction"]:
            return None
        hits = memory.search_text(slide["source_prompt"], k=1, namespace=recall_namespace)
        if not hits or hits[0].score < recall_score:
            return None
        source = memory.load(hits[0].record.id)
        result = engine.edit_image(source, slide["instruction"], seed=seed, **render)
        return _store(result.image, "edited", namespace, slide["image_prompt"], hits[0].record.id, seed)

    def _store(
        picture: Image.Image, kind: str, namespace: str, prompt: str, parent: str | None, seed: int
    ) -> ImageRecord:
        """Store a slide picture; its prompt is what it should show, so a later slide recalls it by that text."""
        return memory.add(
            picture,
            kind=kind,
            namespace=namespace,
            prompt=prompt,
            parent_id=parent,
            operation=f"slides-{'edit' if parent else 'generate'}",
            seed=seed,
            model=model_name,
        )

    def critique(state: SlidesState) -> dict[str, Any]:
        slides = [dict(slide) for slide in state["slides"]]
        writer = get_stream_writer()
        for index, slide in enumerate(slides):
            if slide["passed"] or len(slide["critiques"]) > slide["attempts"]:
                continue  # passed, or this attempt is already judged
            review = _review(slide)
            slide["critiques"] = [*slide["critiques"], review]
            slide["passed"] = review["score"] >= pass_score
            writer({"event": "slide_critique", "slide": index, **review})
        return {"slides": slides}

    def _review(slide: dict[str, Any]) -> dict[str, Any]:
        picture = memory.load(slide["image_id"])
        caption = engine.comprehend(picture, world.CAPTION_QUESTION).text.strip()
        review: dict[str, Any] = {"attempt": slide["attempts"], "image_id": slide["image_id"], "caption": caption}
        if slide["scene"] is None:  # free-form slide: how many of the prompt's words the caption says
            wanted = {w for w in re.findall(r"[a-z]+", slide["image_prompt"].lower()) if w not in _STOP_WORDS}
            said = set(re.findall(r"[a-z]+", caption.lower()))
            review.update(score=len(wanted & said) / max(1, len(wanted)), missing=sorted(wanted - said), misplaced=[])
            return review
        scene = scene_from_dict(slide["scene"])
        missing, misplaced = [], []
        for shape_index, shape in enumerate(scene.shapes):
            phrase = world.referring_phrase(scene, shape_index)
            boxes = engine.ground(picture, phrase).boxes
            expected = _planned_box(shape, picture.size)
            if not boxes:
                missing.append(phrase)
            elif max(_iou(box.as_tuple(), expected) for box in boxes) < GROUNDING_IOU:
                misplaced.append([phrase, shape.position])
        found = len(scene.shapes) - len(missing) - len(misplaced)
        review.update(score=found / max(1, len(scene.shapes)), missing=missing, misplaced=misplaced)
        return review

    def refine(state: SlidesState) -> dict[str, Any]:
        slides = [dict(slide) for slide in state["slides"]]
        writer = get_stream_writer()
        for index, slide in enumerate(slides):
            if slide["passed"] or slide["attempts"] >= max_refine:
                continue
            last = slide["critiques"][-1]
            attempt = slide["attempts"] + 1
            seed = state["base_seed"] + index + 1000 * attempt  # a new, recorded seed per attempt
            if last["misplaced"] and not last["missing"]:  # right shapes, wrong place: move one by an edit
                phrase, position = last["misplaced"][0]
                instruction = f"move {phrase} to the {position}"
                result = engine.edit_image(memory.load(slide["image_id"]), instruction, seed=seed, **render)
                record = _store(
                    result.image, "edited", state["namespace"], slide["image_prompt"], slide["image_id"], seed
                )
                action = "edit"
            else:  # something is missing: draw it again with a new seed
                result = engine.generate_image(slide["image_prompt"], seed=seed, **render)
                record = _store(result.image, "generated", state["namespace"], slide["image_prompt"], None, seed)
                action = "regenerate"
            slide.update(image_id=record.id, attempts=attempt)
            writer(
                {"event": "slide_refine", "slide": index, "attempt": attempt, "action": action, "image_id": record.id}
            )
        return {"slides": slides}

    def route(state: SlidesState) -> Literal["refine", "deck"]:
        pending = [s for s in state["slides"] if not s["passed"] and s["attempts"] < max_refine]
        return "refine" if pending else "deck"

    def deck(state: SlidesState) -> dict[str, Any]:
        pptx_path, previews = write_deck(memory, state["slides"], out)
        get_stream_writer()({"event": "slides_done", "pptx": str(pptx_path), "previews": [str(p) for p in previews]})
        return {"pptx": str(pptx_path), "previews": [str(path) for path in previews]}

    builder = StateGraph(SlidesState)
    builder.add_node("outline", outline)
    builder.add_node("illustrate", illustrate)
    builder.add_node("critique", critique)
    builder.add_node("refine", refine)
    builder.add_node("deck", deck)
    builder.add_edge(START, "outline")
    builder.add_edge("outline", "illustrate")
    builder.add_edge("illustrate", "critique")
    builder.add_conditional_edges("critique", route)
    builder.add_edge("refine", "critique")
    builder.add_edge("deck", END)
    graph = builder.compile(checkpointer=checkpointer, name="seedx-slides")
    return graph.with_config(recursion_limit=2 * max_refine + 10)


def _planned_box(shape: world.Shape, size: tuple[int, int]) -> tuple[float, float, float, float]:
    reference = 300  # world boxes at a reference size, scaled to the picture's width and height
    x1, y1, x2, y2 = world.object_box(shape, reference)
    width, height = size
    return (x1 * width / reference, y1 * height / reference, x2 * width / reference, y2 * height / reference)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# ---------------------------------------------------------------------------------------------- the deck


def write_deck(memory: ImageMemory, slides: list[dict[str, Any]], out: Path) -> tuple[Path, list[Path]]:
    """Write ``deck.pptx`` (title, bullets, one picture per slide), ``slide_NN.png`` previews and pictures."""
    try:
        from pptx import Presentation
        from pptx.util import Emu, Pt
    except ImportError as error:
        raise DependencyMissingError("writing slides needs python-pptx: pip install 'seedx-agent[agent]'") from error
    out.mkdir(parents=True, exist_ok=True)
    presentation = Presentation()
    presentation.slide_width, presentation.slide_height = Emu(12192000), Emu(6858000)  # 16:9
    width, height = presentation.slide_width, presentation.slide_height
    previews = []
    for index, slide in enumerate(slides):
        picture_path = out / f"picture_{index:02d}.png"
        with memory.load(slide["image_id"]) as picture:
            picture.resize((PICTURE_PIXELS, PICTURE_PIXELS), Image.Resampling.NEAREST).save(picture_path)
        page = presentation.slides.add_slide(presentation.slide_layouts[5])  # "Title Only"
        page.shapes.title.text = slide["title"]
        side = int(height * 0.6)
        left_picture = slide["layout"] == "picture_left"
        if slide["layout"] == "title":
            picture_box = ((width - side) // 2, int(height * 0.3))
            text_box = (int(width * 0.05), int(height * 0.18), int(width * 0.9), int(height * 0.1))
        else:
            picture_box = (int(width * 0.05) if left_picture else int(width * 0.95) - side, int(height * 0.3))
            text_left = int(width * 0.05) + (side + int(width * 0.03) if left_picture else 0)
            text_box = (text_left, int(height * 0.3), int(width * 0.9) - side - int(width * 0.03), side)
        page.shapes.add_picture(str(picture_path), picture_box[0], picture_box[1], side, side)
        frame = page.shapes.add_textbox(*text_box).text_frame
        frame.word_wrap = True
        for line_index, bullet in enumerate(_visible_bullets(slide)):
            paragraph = frame.paragraphs[0] if line_index == 0 else frame.add_paragraph()
            paragraph.text = f"• {bullet}"
            paragraph.font.size = Pt(20)
        previews.append(_preview(slide, picture_path, out / f"slide_{index:02d}.png"))
    pptx_path = out / "deck.pptx"
    presentation.save(pptx_path)
    return pptx_path, previews


def _visible_bullets(slide: dict[str, Any]) -> list[str]:
    """All bullets, except on a title slide where only the first line fits above the picture."""
    return slide["bullets"] if slide["layout"] != "title" else slide["bullets"][:1]


def _preview(slide: dict[str, Any], picture_path: Path, path: Path) -> Path:
    """A Pillow rendering of the slide with the same layout as the deck (for quick looks and tests)."""
    width, height = PREVIEW_SIZE
    canvas = Image.new("RGB", PREVIEW_SIZE, "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((int(width * 0.05), int(height * 0.06)), slide["title"], fill="black", font=ImageFont.load_default(36))
    side = int(height * 0.6)
    if slide["layout"] == "title":
        picture_xy, text_xy = ((width - side) // 2, int(height * 0.35)), (int(width * 0.05), int(height * 0.2))
    elif slide["layout"] == "picture_left":
        picture_xy, text_xy = (int(width * 0.05), int(height * 0.3)), (int(width * 0.1) + side, int(height * 0.3))
    else:
        picture_xy, text_xy = (int(width * 0.95) - side, int(height * 0.3)), (int(width * 0.05), int(height * 0.3))
    with Image.open(picture_path) as picture:
        canvas.paste(picture.convert("RGB").resize((side, side), Image.Resampling.NEAREST), picture_xy)
    font = ImageFont.load_default(20)
    for line_index, bullet in enumerate(_visible_bullets(slide)):
        draw.text((text_xy[0], text_xy[1] + 30 * line_index), f"• {bullet}", fill="black", font=font)
    canvas.save(path)
    return path


# ---------------------------------------------------------------------------------------------- langgraph.json


def make_slides_graph() -> CompiledStateGraph:
    """Zero-argument factory for ``langgraph.json`` (``SEEDX_MODEL``, ``SEEDX_MEMORY_DIR``, ``SEEDX_SLIDES_OUT``)."""
    engine, memory = engine_and_memory_from_env()
    return create_slides_graph(engine, memory, out_dir=os.environ.get("SEEDX_SLIDES_OUT", "outputs/slides"))
