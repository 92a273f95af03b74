"""Planning for the story, slides and refine workflows: the schemas a planner fills in, and how it is asked.

A planner is any object with ``plan(task, schema, request) -> schema instance`` (``StructuredPlanner``). Two
kinds exist:

- ``ChatModelPlanner`` wraps any LangChain ``BaseChatModel`` (``ChatSeedX`` on the same engine, a hosted or a
  local model, a scripted model in tests). It asks for one JSON object matching the task's pydantic schema,
  validates the answer, and on a malformed answer asks once more quoting the validation error; a second
  failure raises ``PlannerOutputError``. Plain JSON in the answer text works with every chat model, including
  ones without native structured output.
- Deterministic planners that speak the same schemas without a language model (the miniature world's plug-in,
  ``seedx_agent.miniature.planners``), so CPU demos stay checkable.

The workflows call ``as_planner(obj)`` and never know which kind they got.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from seedx_agent.errors import ConfigError, SeedXError

__all__ = [
    "Character",
    "ChatModelPlanner",
    "Check",
    "EditFix",
    "PlanTask",
    "PlannerOutputError",
    "RefinePlan",
    "SlideOutline",
    "SlideSpec",
    "StoryBeat",
    "StoryChunk",
    "StructuredPlanner",
    "as_planner",
    "plan_checked",
]

PlanTask = Literal["story_beats", "slides_outline", "refine_checks", "fix"]
M = TypeVar("M", bound=BaseModel)
MAX_TEXT = 2000  # characters of any one planned text (a prompt, a bullet, a beat)


class PlannerOutputError(SeedXError, ValueError):
    """The planner's answer did not match the schema, even after one repair request."""


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Check(_Schema):
    """One yes/no fact a picture must show, verified by SEED-X itself.

    ``ask``: ``query`` is a question, passed when the answer contains every word of ``expect`` (e.g. "yes").
    ``ground``: ``query`` is a phrase to locate; passed when a box is found and, if ``expect`` names a region
    ("top left", "left", "center", ...), the box centre lies in it.
    """

    kind: Literal["ask", "ground"]
    query: str = Field(min_length=1, max_length=MAX_TEXT)
    expect: str | None = Field(default=None, max_length=200)
    tag: str | None = Field(default=None, max_length=200, description="the planner's own label, echoed back in fixes")

    @field_validator("expect")
    @classmethod
    def _ask_needs_an_answer(cls, value: str | None) -> str | None:
        return value or None


class Character(_Schema):
    """A recurring character of a story: a short name and what it looks like (used in prompts and checks)."""

    name: str = Field(min_length=1, max_length=80)
    description: str = Field(min_length=1, max_length=MAX_TEXT)


class StoryBeat(_Schema):
    """One page of a story: the text, the picture, who appears, and whether the scene carries over."""

    text: str = Field(min_length=1, max_length=MAX_TEXT)
    picture_prompt: str = Field(min_length=1, max_length=MAX_TEXT, description="what the picture shows")
    characters: list[str] = Field(default_factory=list, max_length=8, description="names from the character list")
    same_scene: bool = Field(default=False, description="edit the previous picture instead of drawing a new one")
    edit_instruction: str | None = Field(default=None, max_length=MAX_TEXT, description="the edit, when same_scene")
    checks: list[Check] = Field(default_factory=list, max_length=8, description="empty: one per character")


class StoryChunk(_Schema):
    """The next beats of a story (and, on the first request, its characters)."""

    characters: list[Character] = Field(default_factory=list, max_length=16)
    beats: list[StoryBeat] = Field(min_length=1)


class SlideSpec(_Schema):
    """One slide: its text, its picture and what the picture must show to match the text."""

    title: str = Field(min_length=1, max_length=200)
    bullets: list[str] = Field(default_factory=list, max_length=8)
    layout: Literal["title", "picture_right", "picture_left", "picture_full"] = "picture_right"
    picture_prompt: str = Field(min_length=1, max_length=MAX_TEXT)
    notes: str = Field(default="", max_length=4 * MAX_TEXT)
    recall_query: str | None = Field(default=None, max_length=MAX_TEXT, description="a stored picture to start from")
    edit_instruction: str | None = Field(default=None, max_length=MAX_TEXT, description="turns the recalled picture")
    checks: list[Check] = Field(default_factory=list, max_length=8, description="empty: 'does it show the prompt?'")


class SlideOutline(_Schema):
    """A deck's outline."""

    slides: list[SlideSpec] = Field(min_length=1)


class RefinePlan(_Schema):
    """How a request is drawn (``prompt``) and checked (``checks``)."""

    prompt: str = Field(min_length=1, max_length=MAX_TEXT)
    checks: list[Check] = Field(min_length=1, max_length=16)


class EditFix(_Schema):
    """How to correct a picture that failed a check: edit it with ``instruction``, or draw it again."""

    action: Literal["edit", "regenerate"] = "edit"
    instruction: str = Field(min_length=1, max_length=MAX_TEXT)


@runtime_checkable
class StructuredPlanner(Protocol):
    """Anything that fills in a workflow's schema for a task and a JSON-friendly request."""

    def plan(self, task: PlanTask, schema: type[M], request: dict[str, Any]) -> M:  # pragma: no cover - protocol
        """Return an instance of ``schema`` answering ``request`` for ``task``."""
        ...


_TASKS: dict[str, str] = {
    "story_beats": (
        "You write illustrated stories. Continue the story of `premise` with exactly `count` beats, numbered from "
        "`first_beat` of `total_beats`; `previous` holds the last beats written. On the first request also list "
        "the recurring characters (name + visual description); later, reuse their names. Each beat has the page "
        "text, a self-contained picture_prompt naming the characters' looks, the names of the characters shown, "
        "and same_scene=true with an edit_instruction when the picture is the previous one changed a little."
    ),
    "slides_outline": (
        "You plan slide decks. Write exactly `n_slides` slides about `topic`: a title, at most 6 short bullets, a "
        "layout, a picture_prompt describing the slide's picture, and speaker notes. Optionally add checks: "
        "yes/no questions (kind 'ask', expect 'yes') or phrases to locate (kind 'ground', expect a region such "
        "as 'left' or 'top right') that the picture must pass to match the slide."
    ),
    "refine_checks": (
        "You turn a picture request into a generation prompt and checks a vision model can verify: yes/no "
        "questions (kind 'ask', expect 'yes' or the expected one-word answer) and phrases to locate (kind "
        "'ground', expect a region such as 'left', 'top right', 'center', or null for anywhere). One check per "
        "object, attribute, count or position the request asks for."
    ),
    "fix": (
        "A picture failed a check. Write one short edit instruction that fixes it (action 'edit'), or action "
        "'regenerate' with an improved full prompt as instruction when the picture is too far off."
    ),
}


def _answer_text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts = [
        block if isinstance(block, str) else str(block.get("text", ""))
        for block in content
        if isinstance(block, str) or (isinstance(block, dict) and block.get("type") == "text")
    ]
    return "".join(parts)


def _json_object(text: str) -> str:
    """The outermost ``{...}`` of an answer (models wrap JSON in prose or code fences); the text if none."""
    fenced = re.search(r"```(?:json)?\s*(\{.*\})\s*```", text, re.S)
    if fenced:
        return fenced.group(1)
    start, end = text.find("{"), text.rfind("}")
    return text[start : end + 1] if 0 <= start < end else text


def _problems(error: ValidationError | ValueError) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in detail['loc']) or 'answer'}: {detail['msg']}"
            for detail in error.errors(include_url=False)[:8]
        )
    return str(error)


class ChatModelPlanner:
    """A ``StructuredPlanner`` over any LangChain chat model: JSON answers, one repair retry, typed errors."""

    def __init__(self, model: BaseChatModel, *, system_prompt: str | None = None) -> None:
        if not isinstance(model, BaseChatModel):
            raise ConfigError(f"ChatModelPlanner needs a LangChain BaseChatModel, got {type(model).__name__}")
        self.model = model
        self.system_prompt = system_prompt

    def plan(
        self,
        task: PlanTask,
        schema: type[M],
        request: dict[str, Any],
        *,
        validate: Callable[[M], None] | None = None,
    ) -> M:
        """Ask for ``schema`` as JSON; retry once with the validation error; raise ``PlannerOutputError``."""
        system = "\n\n".join(
            part
            for part in (
                self.system_prompt,
                _TASKS[task],
                "Answer with one JSON object and nothing else. Its JSON schema:\n"
                + json.dumps(schema.model_json_schema(), separators=(",", ":")),
            )
            if part
        )
        messages: list[BaseMessage] = [SystemMessage(system), HumanMessage(json.dumps(request, ensure_ascii=False))]
        error: ValidationError | ValueError | None = None
        text = ""
        for attempt in range(2):
            answer = self.model.invoke(messages)
            text = _answer_text(answer)
            try:
                plan = schema.model_validate_json(_json_object(text))
                if validate is not None:
                    validate(plan)
                return plan
            except (ValidationError, ValueError) as caught:
                error = caught
            if attempt == 0:
                messages += [
                    AIMessage(text),
                    HumanMessage(
                        f"That answer is not valid ({_problems(error)}). Answer again with only the corrected JSON "
                        "object matching the schema."
                    ),
                ]
        assert error is not None
        raise PlannerOutputError(
            f"the planner's answer for {task!r} is not a valid {schema.__name__} after one repair request "
            f"({_problems(error)}); last answer: {text[:300]!r}. Use a planner model that follows JSON "
            "instructions (--planner), or check its prompt"
        )


def as_planner(planner: object) -> StructuredPlanner:
    """A ``StructuredPlanner`` from a chat model (wrapped) or an object that already plans; else ``ConfigError``."""
    if isinstance(planner, BaseChatModel):
        return ChatModelPlanner(planner)
    if isinstance(planner, StructuredPlanner):
        return planner
    raise ConfigError(
        f"planner must be a LangChain chat model or an object with plan(task, schema, request), got "
        f"{type(planner).__name__}; e.g. ChatSeedX(engine=...) or seedx_agent.miniature.planners.WorldPlanner()"
    )


def plan_checked(
    planner: StructuredPlanner,
    task: PlanTask,
    schema: type[M],
    request: dict[str, Any],
    validate: Callable[[M], None],
) -> M:
    """``planner.plan`` plus a semantic check (e.g. "exactly N slides"); chat planners repair it once too."""
    if isinstance(planner, ChatModelPlanner):
        return planner.plan(task, schema, request, validate=validate)
    plan = planner.plan(task, schema, request)
    if not isinstance(plan, schema):
        raise PlannerOutputError(f"planner {type(planner).__name__} returned {type(plan).__name__} for {task!r}")
    try:
        validate(plan)
    except ValueError as error:
        raise PlannerOutputError(f"planner {type(planner).__name__} answered {task!r} wrongly: {error}") from error
    return plan
