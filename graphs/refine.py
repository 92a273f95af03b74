"""Generate -> verify -> correct until the picture matches the request (GenArtist-style verify-and-correct).

The planner turns the request (any words: "a lighthouse at dusk, warm light, two boats") into a generation
prompt and checks SEED-X can verify on the picture: yes/no questions answered by comprehension and phrases
located by grounding, optionally in a region ("left", "top right"). The first failed check goes back to the
planner, which writes one correction: an edit instruction, or a better prompt to draw again. The loop stops
when every check passes or after ``max_rounds`` corrections; with ``approve=True`` each correction waits for
a human (LangGraph ``interrupt``: resume with ``Command(resume=True)``, ``False`` to stop, or a string to use
as the instruction instead).

Every version is stored in the image memory with lineage (``parent_id`` + ``operation``) through the shared
``SeedXToolbox``; the state holds only ids, checks and verdicts. ``verified`` in the final state says whether
the last version passed every check: a caller (and the CLI's exit code) must look at it. ``best_image_id`` is
the version that passed the most checks (the earliest on a tie), so a correction that made things worse in
the verifier's eyes is never the answer; the last version is ``image_id``.
"""

from __future__ import annotations

import operator
import os
from typing import Annotated, Any, Literal

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.types import interrupt
from seedx_agent.memory import ImageMemory
from seedx_agent.tools import SeedXToolbox
from typing_extensions import TypedDict

from seedx_agent.errors import ConfigError, InvalidPromptError

from .checks import run_checks
from .planning import Check, EditFix, RefinePlan, as_planner, plan_checked

__all__ = ["RefineInput", "RefineState", "Verdict", "best_version", "create_refine_graph", "make_refine_graph"]


class Verdict(TypedDict):
    """The verifier's result for one version of the picture."""

    image_id: str
    round: int
    verified: bool
    checks: list[dict[str, Any]]


class RefineInput(TypedDict, total=False):
    """What a caller passes: the request, and optionally the seed of the first generation."""

    request: str
    seed: int


class RefineState(TypedDict, total=False):
    """Ids, checks and verdicts only (never pixels); ``versions``/``verdicts`` accumulate over rounds."""

    request: str
    seed: int
    prompt: str
    checks: list[dict[str, Any]]
    image_id: str
    round: int
    fix: dict[str, Any] | None
    versions: Annotated[list[dict[str, Any]], operator.add]
    verdicts: Annotated[list[Verdict], operator.add]
    verified: bool
    best_image_id: str  # the version that passed the most checks (the earliest on a tie): the answer to use
    stopped: str | None  # why the loop ended without verification ("rounds", "declined")


def best_version(verdicts: list[Verdict]) -> int:
    """Index of the verdict whose version passed the most checks, the earliest on a tie: the loop's answer."""
    passed = [sum(check["passed"] for check in verdict["checks"]) for verdict in verdicts]
    return passed.index(max(passed))


def _check_seed(seed: object) -> int:
    """Seeds are non-negative integers (they are recorded in memory); anything else is the caller's mistake."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}; pass e.g. {{'seed': 0}}")
    return seed


def create_refine_graph(
    engine: Any,
    memory: ImageMemory,
    *,
    planner: object,
    max_rounds: int = 3,
    approve: bool = False,
    namespace: str = "refine",
    num_inference_steps: int | None = None,
    checkpointer: BaseCheckpointSaver | None = None,
    store: BaseStore | None = None,
    name: str = "seedx_refine",
) -> CompiledStateGraph:
    """Compile ``plan -> generate -> verify -> (fix -> [approve] -> correct -> verify)*``.

    Invoke with ``{"request": "a lighthouse at dusk, two boats", "seed": 0}``. ``planner`` is a LangChain chat
    model or a ``StructuredPlanner``; at most ``max_rounds`` corrections; ``approve=True`` pauses before each
    correction for a human (needs a ``checkpointer``). New images go to ``memory`` under ``namespace``.
    """
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 0:
        raise ConfigError(f"max_rounds must be an int >= 0 (0 = generate and verify only), got {max_rounds!r}")
    if approve and checkpointer is None:
        raise ConfigError(
            "approve=True pauses the graph for a human, which needs a checkpointer (e.g. InMemorySaver())"
        )
    plans = as_planner(planner)
    toolbox = SeedXToolbox(engine, memory, namespace, num_inference_steps)

    def plan(state: RefineState) -> dict[str, Any]:
        """The planner turns the request into a prompt and checks (nothing is stored if it fails)."""
        request = state.get("request")
        if not isinstance(request, str) or not request.strip():
            raise InvalidPromptError(f"the refine request is empty ({request!r}); describe the picture to make")
        seed = _check_seed(state.get("seed", 0))
        refine_plan = plan_checked(plans, "refine_checks", RefinePlan, {"request": request.strip()}, lambda p: None)
        get_stream_writer()({"event": "plan", "prompt": refine_plan.prompt, "checks": len(refine_plan.checks)})
        return {
            "request": request.strip(),
            "seed": seed,
            "prompt": refine_plan.prompt,
            "checks": [check.model_dump() for check in refine_plan.checks],
            "round": 0,
            "stopped": None,
        }

    def generate(state: RefineState) -> dict[str, Any]:
        """Make the first version from the planned prompt."""
        write = get_stream_writer()
        write({"event": "generate_start", "prompt": state["prompt"]})
        record = toolbox.render(state["prompt"], seed=state["seed"], operation="generate", caption=state["request"])
        write({"event": "generate_end", "image_id": record.id})
        version = {"image_id": record.id, "parent_id": None, "operation": "generate", "instruction": None, "round": 0}
        return {"image_id": record.id, "versions": [version]}

    def verify(state: RefineState) -> dict[str, Any]:
        """Run every check on the current version."""
        image_id, round_index = state["image_id"], state.get("round", 0)
        write = get_stream_writer()
        write({"event": "verify_start", "image_id": image_id, "round": round_index})
        checks = [Check.model_validate(c) for c in state["checks"]]
        results = run_checks(engine, toolbox.load(image_id), checks)
        verified = all(r["passed"] for r in results)
        verdict: Verdict = {"image_id": image_id, "round": round_index, "verified": verified, "checks": results}
        write({"event": "verify_end", "image_id": image_id, "round": round_index, "verified": verified})
        verdicts = [*(state.get("verdicts") or []), verdict]
        best = verdicts[best_version(verdicts)]["image_id"]
        return {"verdicts": [verdict], "verified": verified, "best_image_id": best}

    def fix(state: RefineState) -> dict[str, Any]:
        """Ask the planner for one correction of the first failed check (all failures are shown)."""
        failed = [c for c in state["verdicts"][-1]["checks"] if not c["passed"]]
        request = {
            "request": state["request"],
            "picture_prompt": state["prompt"],
            "failed": failed,
            "round": state.get("round", 0) + 1,
        }
        correction = plan_checked(plans, "fix", EditFix, request, lambda p: None)
        get_stream_writer()({"event": "fix", **correction.model_dump()})
        return {"fix": correction.model_dump()}

    def correct(state: RefineState) -> dict[str, Any]:
        """Apply the correction (after a human's approval when asked), making a child version."""
        correction = dict(state["fix"] or {})
        if approve:
            answer = interrupt({"image_id": state["image_id"], **correction, "round": state.get("round", 0) + 1})
            if answer is False or answer is None:
                return {"stopped": "declined", "fix": None}
            if isinstance(answer, str) and answer.strip():
                correction["instruction"] = answer.strip()
        parent_id, round_index = state["image_id"], state.get("round", 0) + 1
        seed = state["seed"] + round_index
        write = get_stream_writer()
        write({"event": "edit_start", "image_id": parent_id, "round": round_index, **correction})
        if correction["action"] == "regenerate":
            record = toolbox.render(
                correction["instruction"], seed=seed, operation="regenerate", caption=state["request"]
            )
            parent = None
        else:
            record = toolbox.revise(
                parent_id, correction["instruction"], seed=seed, operation="edit", caption=state["request"]
            )
            parent = parent_id
        write({"event": "edit_end", "image_id": record.id, "round": round_index})
        version = {
            "image_id": record.id,
            "parent_id": parent,
            "operation": correction["action"],
            "instruction": correction["instruction"],
            "round": round_index,
        }
        return {"image_id": record.id, "round": round_index, "versions": [version], "fix": None}

    def after_verify(state: RefineState) -> Literal["fix", "__end__"]:
        if state.get("verified"):
            return END
        if state.get("round", 0) >= max_rounds:
            return END
        return "fix"

    def after_correct(state: RefineState) -> Literal["verify", "__end__"]:
        return END if state.get("stopped") else "verify"

    graph = StateGraph(RefineState, input_schema=RefineInput)
    graph.add_node("plan", plan)
    graph.add_node("generate", generate)
    graph.add_node("verify", verify)
    graph.add_node("fix", fix)
    graph.add_node("correct", correct)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "generate")
    graph.add_edge("generate", "verify")
    graph.add_conditional_edges("verify", after_verify, ["fix", END])
    graph.add_edge("fix", "correct")
    graph.add_conditional_edges("correct", after_correct, ["verify", END])
    return graph.compile(checkpointer=checkpointer, store=store, name=name)


def make_refine_graph() -> CompiledStateGraph:
    """LangGraph server entry point: the refine graph over ``SEEDX_MODEL`` / ``SEEDX_MEMORY_DIR`` /
    ``SEEDX_PLANNER`` (rounds from ``SEEDX_REFINE_ROUNDS``, default 3)."""
    from seedx_agent.graphs.runtime import planner_from_env, shared_engine_and_memory_from_env

    engine, memory = shared_engine_and_memory_from_env()  # loaded once per process, then shared
    return create_refine_graph(
        engine,
        memory,
        planner=planner_from_env(engine, memory),
        max_rounds=int(os.environ.get("SEEDX_REFINE_ROUNDS", "3")),
    )
