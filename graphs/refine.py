"""Generate -> verify -> edit until the picture matches the request (or the round limit is reached).

The request is read into checkable facts with the miniature world's vocabulary (``KINDS``, ``COLOURS``,
``SIZES``, ``POSITIONS``): ``"a red circle at the top left"`` becomes one object ``{kind: circle, colour: red,
position: top left}``; several objects are joined by "and". The verifier asks SEED-X the world's own questions
("what colour is the circle?", "what shape is red?", "what size is the red circle?") and grounds "the red
circle", comparing the box centre's 3x3 cell with the requested position. The first failed check becomes one
edit instruction in the world's edit phrasing ("make the blue circle red", "move the red circle to the top
left", "add a red circle at the top left"). Words outside that vocabulary are ignored, so a free-form request
is only checked on the facts it shares with the world; a request with none is refused.

Every version is stored in the image memory with lineage (``parent_id`` + ``operation``); the graph state holds
only ids, facts and verdicts, never pixels. Run with ``durability="sync"`` so each finished (expensive)
generation or edit is checkpointed before the next starts.
"""

from __future__ import annotations

import operator
import re
from typing import Annotated, Any, Literal

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from PIL import Image
from seedx_agent.memory import ImageMemory
from seedx_agent.memory.records import validate_namespace
from typing_extensions import TypedDict

from seedx_agent.engine import SeedXEngine
from seedx_agent.errors import ConfigError, InvalidPromptError
from seedx_agent.miniature.world import COLOURS, GRID, KINDS, POSITION_PHRASES, POSITIONS, SIZES, text_words
from seedx_agent.tokens import Box

__all__ = [
    "Check",
    "ObjectFacts",
    "RefineInput",
    "RefineState",
    "Verdict",
    "create_refine_graph",
    "edit_instruction",
    "make_refine_graph",
    "parse_request",
    "position_of_box",
    "verify_image",
]

_POSITION_SYNONYMS = {"centre": "center", "middle": "center"}
# Longest names first, so "top left" wins over "top" and "left".
_POSITIONS_LONGEST_FIRST = sorted(POSITIONS, key=len, reverse=True)
_PLURAL_KINDS = {kind + "s": kind for kind in KINDS}


class ObjectFacts(TypedDict, total=False):
    """What the request says about one object; absent keys were not mentioned."""

    kind: str
    colour: str
    size: str
    position: str


class Check(TypedDict):
    """One verification step: what was asked, what was expected and what the model saw."""

    object: int
    check: Literal["shape", "colour", "size", "position"]
    query: str
    expected: str
    observed: str | None
    passed: bool


class Verdict(TypedDict):
    """The verifier's result for one version of the picture."""

    image_id: str
    round: int
    verified: bool
    checks: list[Check]
    instruction: str | None


class RefineInput(TypedDict, total=False):
    """What a caller passes: the request, and optionally the seed of the first generation."""

    request: str
    seed: int


class RefineState(TypedDict, total=False):
    """Ids, facts and verdicts only (never pixels); ``versions``/``verdicts`` accumulate over rounds."""

    request: str
    seed: int
    objects: list[ObjectFacts]
    image_id: str
    round: int
    versions: Annotated[list[dict[str, Any]], operator.add]
    verdicts: Annotated[list[Verdict], operator.add]
    verified: bool


# ---------------------------------------------------------------------------------------------- parsing


def _find_position(text: str) -> str | None:
    for name in _POSITIONS_LONGEST_FIRST:
        if re.search(rf"\b{name}\b", text):
            return name
    return None


def parse_request(request: str) -> list[ObjectFacts]:
    """Checkable facts per object ("and"-separated) in the world's vocabulary; raise if none are found."""
    if not isinstance(request, str) or not request.strip():
        raise InvalidPromptError(f"the refine request is empty ({request!r}); describe the picture to make")
    objects: list[ObjectFacts] = []
    for chunk in re.split(r"\band\b|,", request.lower()):
        words = [_POSITION_SYNONYMS.get(word, word) for word in text_words(chunk)]
        facts: ObjectFacts = {}
        for word in words:
            kind = _PLURAL_KINDS.get(word, word)
            if kind in KINDS and "kind" not in facts:
                facts["kind"] = kind
            elif word in COLOURS and "colour" not in facts:
                facts["colour"] = word
            elif word in SIZES and "size" not in facts:
                facts["size"] = word
        position = _find_position(" ".join(words))
        if position is not None:
            facts["position"] = position
        if facts.get("kind") or facts.get("colour"):  # a position alone names no object
            objects.append(facts)
    if not objects:
        raise InvalidPromptError(
            f"nothing in {request!r} can be verified: name a shape ({', '.join(KINDS)}) or a colour "
            f"({', '.join(COLOURS)}), optionally a size and a position such as 'top left'"
        )
    return objects


def position_of_box(box: Box, width: int, height: int) -> str:
    """The 3x3 cell name (``POSITIONS``) containing the centre of a pixel box."""
    centre_x = (box.x1 + box.x2) / 2 / width
    centre_y = (box.y1 + box.y2) / 2 / height
    col = min(GRID - 1, max(0, int(centre_x * GRID)))
    row = min(GRID - 1, max(0, int(centre_y * GRID)))
    return POSITIONS[row * GRID + col]


def _first_word_in(answer: str, vocabulary: tuple[str, ...]) -> str | None:
    for word in text_words(answer):
        word = _PLURAL_KINDS.get(word, word) if vocabulary is KINDS else word
        if word in vocabulary:
            return word
    return None


def _referring(facts: ObjectFacts, *, colour: str | None = None) -> str:
    colour = colour or facts.get("colour")
    return "the " + " ".join(part for part in (colour, facts.get("kind") or "shape") if part)


def _indefinite(facts: ObjectFacts) -> str:
    words = [w for w in (facts.get("size"), facts.get("colour"), facts.get("kind") or "shape") if w]
    phrase = " ".join(words)
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


# ---------------------------------------------------------------------------------------------- verifying


def verify_image(engine: SeedXEngine, image: Image.Image, objects: list[ObjectFacts]) -> list[Check]:
    """Ask SEED-X about each mentioned fact of each object (VQA for shape/colour/size, grounding for position)."""
    checks: list[Check] = []
    for index, facts in enumerate(objects):
        kind, colour, size, position = (facts.get(key) for key in ("kind", "colour", "size", "position"))
        where = POSITION_PHRASES[position] if position else None
        if kind and (colour or where):
            question = f"what shape is {colour}?" if colour else f"what shape is {where}?"
            observed = _first_word_in(engine.comprehend(image, question).text, KINDS)
            checks.append(_check(index, "shape", question, kind, observed))
        if colour and (kind or where):
            question = f"what colour is the {kind}?" if kind else f"what colour is the shape {where}?"
            observed = _first_word_in(engine.comprehend(image, question).text, COLOURS)
            checks.append(_check(index, "colour", question, colour, observed))
        if size:
            question = f"what size is {_referring(facts)}?"
            observed = _first_word_in(engine.comprehend(image, question).text, SIZES)
            checks.append(_check(index, "size", question, size, observed))
        if position:
            phrase = _referring(facts)
            box = engine.ground(image, phrase).box
            observed = position_of_box(box, *image.size) if box is not None else None
            checks.append(_check(index, "position", phrase, position, observed))
    return checks


def _check(index: int, name: str, query: str, expected: str, observed: str | None) -> Check:
    return {
        "object": index,
        "check": name,  # type: ignore[typeddict-item]
        "query": query,
        "expected": expected,
        "observed": observed,
        "passed": observed == expected,
    }


def edit_instruction(objects: list[ObjectFacts], checks: list[Check]) -> str | None:
    """One world-style edit instruction fixing the first failed check (``None`` when all passed)."""
    failed = [check for check in checks if not check["passed"]]
    if not failed:
        return None
    first = failed[0]
    facts = objects[first["object"]]
    failed_here = {check["check"] for check in failed if check["object"] == first["object"]}
    where = f" {POSITION_PHRASES[facts['position']]}" if facts.get("position") else ""
    if "shape" in failed_here or ("colour" in failed_here and "position" in failed_here):
        return f"add {_indefinite(facts)}{where}"  # the object is not there: add it
    if first["check"] == "colour":
        seen = first["observed"]
        target = f"the {seen} {facts['kind']}" if seen and facts.get("kind") else _referring(facts, colour=seen)
        return f"make {target} {facts['colour']}"
    if first["check"] == "size":
        return f"make {_referring(facts)} {facts['size']}"
    if first["observed"] is None:  # position: the object was not found at all
        return f"add {_indefinite(facts)}{where}"
    return f"move {_referring(facts)} to the {facts['position']}"


# ---------------------------------------------------------------------------------------------- the graph


def _check_seed(seed: object) -> int:
    """Seeds are non-negative integers (they are recorded in memory); anything else is the caller's mistake."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}; pass e.g. {{'seed': 0}}")
    return seed


def create_refine_graph(
    engine: SeedXEngine,
    memory: ImageMemory,
    *,
    max_rounds: int = 3,
    namespace: str = "refine",
    num_inference_steps: int | None = None,
    checkpointer: BaseCheckpointSaver | None = None,
    store: BaseStore | None = None,
    name: str = "seedx_refine",
) -> CompiledStateGraph:
    """Compile ``generate -> verify -> (edit -> verify)*``; at most ``max_rounds`` edits, stopping once verified.

    Invoke with ``{"request": "a red circle at the top left", "seed": 0}``. New images go to ``memory`` under
    ``namespace``; ``num_inference_steps`` overrides the diffusion steps (``None`` keeps the model default).
    """
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 0:
        raise ConfigError(f"max_rounds must be an int >= 0 (0 = generate and verify only), got {max_rounds!r}")
    validate_namespace(namespace)
    model_name = engine.model.config.name

    def generate(state: RefineState) -> dict[str, Any]:
        """Parse the request into facts and make the first version."""
        request = state.get("request", "")
        objects = parse_request(request)
        seed = _check_seed(state.get("seed", 0))
        write = get_stream_writer()
        write({"event": "generate_start", "request": request, "objects": objects})
        result = engine.generate_image(request, seed=seed, num_inference_steps=num_inference_steps)
        record = memory.add(
            result.image,
            kind="generated",
            namespace=namespace,
            prompt=request,
            operation="generate",
            seed=seed,
            model=model_name,
        )
        write({"event": "generate_end", "image_id": record.id})
        version = {"image_id": record.id, "parent_id": None, "operation": "generate", "instruction": None, "round": 0}
        return {"objects": objects, "seed": seed, "image_id": record.id, "round": 0, "versions": [version]}

    def verify(state: RefineState) -> dict[str, Any]:
        """Check the current version against the request's facts."""
        image_id, round_index = state["image_id"], state.get("round", 0)
        write = get_stream_writer()
        write({"event": "verify_start", "image_id": image_id, "round": round_index})
        checks = verify_image(engine, memory.load(image_id, namespace=namespace), state["objects"])
        instruction = edit_instruction(state["objects"], checks)
        verdict: Verdict = {
            "image_id": image_id,
            "round": round_index,
            "verified": instruction is None,
            "checks": checks,
            "instruction": instruction,
        }
        write({"event": "verify_end", "image_id": image_id, "round": round_index, "verified": verdict["verified"]})
        return {"verdicts": [verdict], "verified": verdict["verified"]}

    def edit(state: RefineState) -> dict[str, Any]:
        """Apply the last verdict's instruction to the current version, making a child version."""
        parent_id, round_index = state["image_id"], state.get("round", 0) + 1
        instruction = state["verdicts"][-1]["instruction"]
        seed = state.get("seed", 0) + round_index
        write = get_stream_writer()
        write({"event": "edit_start", "image_id": parent_id, "round": round_index, "instruction": instruction})
        source = memory.load(parent_id, namespace=namespace)
        result = engine.edit_image(source, instruction, seed=seed, num_inference_steps=num_inference_steps)
        record = memory.add(
            result.image,
            kind="edited",
            namespace=namespace,
            prompt=instruction,
            parent_id=parent_id,
            operation="edit",
            seed=seed,
            model=model_name,
        )
        write({"event": "edit_end", "image_id": record.id, "round": round_index})
        version = {
            "image_id": record.id,
            "parent_id": parent_id,
            "operation": "edit",
            "instruction": instruction,
            "round": round_index,
        }
        return {"image_id": record.id, "round": round_index, "versions": [version]}

    def after_verify(state: RefineState) -> Literal["edit", "__end__"]:
        if state.get("verified") or state.get("round", 0) >= max_rounds:
            return END
        return "edit"

    graph = StateGraph(RefineState, input_schema=RefineInput)
    graph.add_node("generate", generate)
    graph.add_node("verify", verify)
    graph.add_node("edit", edit)
    graph.add_edge(START, "generate")
    graph.add_edge("generate", "verify")
    graph.add_conditional_edges("verify", after_verify, ["edit", END])
    graph.add_edge("edit", "verify")
    return graph.compile(checkpointer=checkpointer, store=store, name=name)


def make_refine_graph() -> CompiledStateGraph:
    """LangGraph server entry point: the refine graph over ``SEEDX_MODEL`` / ``SEEDX_MEMORY_DIR``."""
    from seedx_agent.graphs.runtime import engine_and_memory_from_env

    engine, memory = engine_and_memory_from_env()
    return create_refine_graph(engine, memory)
