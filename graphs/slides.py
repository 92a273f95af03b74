"""A LangGraph slides graph: topic -> outline -> pictures -> critique against the slide's text -> refine -> deck.

Content-aware slide creation as in the SEED-X paper: the planner (any chat model, or a deterministic plug-in)
writes the outline: per slide a title, bullets, a layout, a picture prompt, speaker notes and, optionally,
checks the picture must pass and a stored picture to start from. Each picture is generated, or recalled from
memory by text and edited. SEED-X then critiques every picture against its own slide (the slide's checks, or
"does the picture show <prompt>?"); a failing picture goes back to the planner, whose correction is applied as
an edit or a redraw, up to ``max_refine`` times. The deck (``deck.pptx`` + ``slide_NN.png`` previews) is written
last, with each picture's sources in the speaker notes.

Every picture is stored through the shared ``SeedXToolbox`` under ``<recall_namespace>/<deck_id>`` with its
lineage; the state holds texts and ids only.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any, Literal

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from seedx_agent.memory import ImageMemory, ImageRecord
from seedx_agent.memory.records import validate_namespace
from seedx_agent.tools import SeedXToolbox
from typing_extensions import TypedDict

from seedx_agent.errors import ConfigError, InvalidPromptError

from .checks import run_checks
from .deck import DeckSlide, write_deck
from .planning import Check, EditFix, SlideOutline, SlideSpec, as_planner, plan_checked

__all__ = ["MAX_SLIDES", "SlidesState", "create_slides_graph", "make_slides_graph", "slide_checks"]

logger = logging.getLogger(__name__)

MAX_SLIDES = 50
RETRY_SEED_OFFSET = 1000  # attempt a of slide i uses seed base + i + a * offset


def _check_count(n_slides: object) -> None:
    if isinstance(n_slides, bool) or not isinstance(n_slides, int) or not 1 <= n_slides <= MAX_SLIDES:
        raise ConfigError(f"n_slides must be an int in [1, {MAX_SLIDES}], got {n_slides!r}")


def slide_checks(slide: SlideSpec) -> list[Check]:
    """The slide's own checks, else one question: does the picture show the slide's picture prompt?"""
    if slide.checks:
        return list(slide.checks)
    return [
        Check(
            kind="ask",
            query=f"Does the picture show {slide.picture_prompt.rstrip('.')}? Answer yes or no.",
            expect="yes",
            tag="slide:prompt",
        )
    ]


class SlidesState(TypedDict, total=False):
    """Texts and ids only; pictures live in the image memory."""

    topic: str
    n_slides: int
    deck_id: str
    namespace: str
    base_seed: int
    slides: list[dict[str, Any]]  # SlideSpec fields + image_id, parent_id, seed, mode, attempts, passed, critiques
    pptx: str | None
    previews: list[str]


def create_slides_graph(
    engine: Any,
    memory: ImageMemory,
    *,
    planner: object,
    out_dir: str | Path,
    max_refine: int = 2,
    n_slides: int = 4,
    recall_namespace: str = "slides",
    recall_score: float = 0.8,
    num_inference_steps: int | None = None,
    checkpointer: BaseCheckpointSaver | None = None,
) -> CompiledStateGraph:
    """A compiled slides graph. Input ``{"topic": str}`` plus optional ``n_slides``, ``base_seed``, ``deck_id``;
    the output state holds ``slides`` (with critiques), ``pptx`` and ``previews`` paths.

    ``planner`` is a LangChain chat model or a ``StructuredPlanner``. A slide's ``recall_query`` is searched in
    ``recall_namespace`` and the best hit is edited when it scores ``>= recall_score``; a picture passes when
    every check passes; at most ``max_refine`` corrections per slide.
    """
    if isinstance(max_refine, bool) or not isinstance(max_refine, int) or max_refine < 0:
        raise ConfigError(f"max_refine must be a non-negative int, got {max_refine!r}")
    _check_count(n_slides)
    if not 0.0 <= recall_score <= 1.0:
        raise ConfigError(f"recall_score must be in [0, 1], got {recall_score!r}")
    validate_namespace(recall_namespace, argument="recall_namespace")
    plans = as_planner(planner)
    out = Path(out_dir)

    def toolbox(state: SlidesState) -> SeedXToolbox:
        return SeedXToolbox(engine, memory, state["namespace"], num_inference_steps, read_namespace=recall_namespace)

    def outline(state: SlidesState) -> dict[str, Any]:
        topic = state.get("topic")
        if not isinstance(topic, str) or not topic.strip():
            raise InvalidPromptError(f"topic must be a non-empty string, got {topic!r}; e.g. 'how tides work'")
        count = state.get("n_slides", n_slides)
        _check_count(count)
        seed = state.get("base_seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"base_seed must be a non-negative int, got {seed!r}")

        def validate(plan: SlideOutline) -> None:
            if len(plan.slides) != count:
                raise ValueError(f"{len(plan.slides)} slides were written, exactly {count} were asked for")

        request = {"topic": topic.strip(), "n_slides": count, "seed": seed}
        plan = plan_checked(plans, "slides_outline", SlideOutline, request, validate)
        deck_id = state.get("deck_id") or f"deck-{secrets.token_hex(4)}"
        get_stream_writer()({"event": "slides_outline", "deck_id": deck_id, "titles": [s.title for s in plan.slides]})
        slides = [
            {
                **spec.model_dump(),
                "image_id": None,
                "parent_id": None,
                "seed": None,
                "mode": None,
                "attempts": 0,
                "passed": False,
                "critiques": [],
            }
            for spec in plan.slides
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
        tools = toolbox(state)
        writer = get_stream_writer()
        for index, slide in enumerate(slides):
            if slide["image_id"] is not None:
                continue  # resumed run: already illustrated
            seed = state["base_seed"] + index
            spec = SlideSpec.model_validate(_spec_fields(slide))
            record = _recall_and_edit(tools, spec, seed)
            mode = "recalled+edited" if record is not None else "generated"
            if record is None:
                record = tools.render(spec.picture_prompt, seed=seed, operation="slides-generate", caption=spec.title)
            slide.update(image_id=record.id, parent_id=record.parent_id, seed=seed, mode=mode)
            writer({"event": "slide_picture", "slide": index, "image_id": record.id, "mode": mode})
        return {"slides": slides}

    def _recall_and_edit(tools: SeedXToolbox, spec: SlideSpec, seed: int) -> ImageRecord | None:
        if not spec.recall_query or not spec.edit_instruction:
            return None
        hits = memory.search_text(spec.recall_query, k=1, namespace=recall_namespace)
        if not hits or hits[0].score < recall_score:
            return None
        return tools.revise(
            hits[0].record.id,
            spec.edit_instruction,
            seed=seed,
            operation="slides-edit",
            prompt=spec.picture_prompt,  # what it shows now, so a later slide recalls it by that text
            caption=spec.title,
        )

    def critique(state: SlidesState) -> dict[str, Any]:
        slides = [dict(slide) for slide in state["slides"]]
        tools = toolbox(state)
        writer = get_stream_writer()
        for index, slide in enumerate(slides):
            if slide["passed"] or len(slide["critiques"]) > slide["attempts"]:
                continue  # passed, or this attempt is already judged
            spec = SlideSpec.model_validate(_spec_fields(slide))
            results = run_checks(engine, tools.load(slide["image_id"]), slide_checks(spec))
            passed = all(r["passed"] for r in results)
            review = {"attempt": slide["attempts"], "image_id": slide["image_id"], "passed": passed, "checks": results}
            slide["critiques"] = [*slide["critiques"], review]
            slide["passed"] = passed
            writer({"event": "slide_critique", "slide": index, "passed": passed, "attempt": slide["attempts"]})
        return {"slides": slides}

    def refine(state: SlidesState) -> dict[str, Any]:
        slides = [dict(slide) for slide in state["slides"]]
        tools = toolbox(state)
        writer = get_stream_writer()
        for index, slide in enumerate(slides):
            if slide["passed"] or slide["attempts"] >= max_refine:
                continue
            failed = [c for c in slide["critiques"][-1]["checks"] if not c["passed"]]
            request = {
                "topic": state["topic"],
                "slide": {"title": slide["title"], "bullets": slide["bullets"]},
                "picture_prompt": slide["picture_prompt"],
                "failed": failed,
                "workflow": "slides",
            }
            fix = plan_checked(plans, "fix", EditFix, request, lambda p: None)
            attempt = slide["attempts"] + 1
            seed = state["base_seed"] + index + RETRY_SEED_OFFSET * attempt  # a new, recorded seed per attempt
            if fix.action == "edit":
                record = tools.revise(
                    slide["image_id"],
                    fix.instruction,
                    seed=seed,
                    operation="slides-refine-edit",
                    prompt=slide["picture_prompt"],
                    caption=slide["title"],
                )
            else:
                prompt = fix.instruction or slide["picture_prompt"]
                record = tools.render(prompt, seed=seed, operation="slides-regenerate", caption=slide["title"])
            slide.update(image_id=record.id, parent_id=record.parent_id, seed=seed, attempts=attempt)
            slide["mode"] = f"{slide['mode']}, then {fix.action} ({fix.instruction})"
            writer(
                {"event": "slide_refine", "slide": index, "attempt": attempt, **fix.model_dump(), "image_id": record.id}
            )
        return {"slides": slides}

    def route(state: SlidesState) -> Literal["refine", "deck"]:
        pending = [s for s in state["slides"] if not s["passed"] and s["attempts"] < max_refine]
        return "refine" if pending else "deck"

    def deck(state: SlidesState) -> dict[str, Any]:
        out.mkdir(parents=True, exist_ok=True)
        tools = toolbox(state)
        pages = []
        for index, slide in enumerate(state["slides"]):
            picture_path = out / f"picture_{index:02d}.png"
            with tools.load(slide["image_id"]) as picture:
                picture.save(picture_path)
            pages.append(
                DeckSlide(
                    title=slide["title"],
                    bullets=slide["bullets"],
                    layout=slide["layout"],
                    picture=picture_path,
                    notes=_notes(slide),
                )
            )
        files = write_deck(pages, out, deck_title=state["topic"])
        previews = [str(path) for path in files.previews]
        get_stream_writer()({"event": "slides_done", "pptx": str(files.pptx), "previews": previews})
        return {"pptx": str(files.pptx), "previews": previews}

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


def _spec_fields(slide: dict[str, Any]) -> dict[str, Any]:
    return {key: slide[key] for key in SlideSpec.model_fields}


def _notes(slide: dict[str, Any]) -> str:
    """The planner's notes, then where the picture came from (id, how it was made, prompt, parent, checks)."""
    last = slide["critiques"][-1] if slide["critiques"] else None
    verdict = "not checked"
    if last is not None:
        passed = sum(1 for c in last["checks"] if c["passed"])
        verdict = f"{passed}/{len(last['checks'])} checks passed"
    source = [
        f"Picture: {slide['image_id']} ({slide['mode']}; seed {slide['seed']}; {verdict})",
        f"Prompt: {slide['picture_prompt']}",
    ]
    if slide.get("parent_id"):
        source.append(f"Edited from: {slide['parent_id']}")
    if slide.get("edit_instruction") and str(slide.get("mode", "")).startswith("recalled"):
        source.append(f"Edit: {slide['edit_instruction']}")
    return "\n".join(part for part in (slide.get("notes") or "", "\n".join(source)) if part)


def make_slides_graph() -> CompiledStateGraph:
    """Zero-argument factory for ``langgraph.json`` (``SEEDX_MODEL``, ``SEEDX_MEMORY_DIR``, ``SEEDX_PLANNER``,
    ``SEEDX_SLIDES_OUT``)."""
    from seedx_agent.graphs.runtime import planner_from_env, shared_engine_and_memory_from_env

    engine, memory = shared_engine_and_memory_from_env()  # loaded once per process, then shared
    return create_slides_graph(
        engine,
        memory,
        planner=planner_from_env(engine, memory),
        out_dir=os.environ.get("SEEDX_SLIDES_OUT", "outputs/slides"),
    )
