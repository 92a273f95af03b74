"""LangChain tools over one ``SeedXEngine`` and one ``ImageMemory``: comprehend, ground, generate, edit, recall.

Tools are thin adapters: validate the arguments, fetch pixels from memory by id, call the engine (which
serialises device work, so ToolNode may run calls in parallel), store new pixels in memory, and return a
short text for the model plus a JSON-serialisable artifact with the ids and boxes. Images never cross the
boundary as pixels or paths. Mistakes the calling model can fix become tool error messages
(``ToolException`` with ``handle_tool_error=True``); programming errors propagate.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from langchain_core.tools import BaseTool, StructuredTool, ToolException
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from seedx_agent.memory import ImageMemory, ImageRecord, InvalidMemoryRequestError, UnknownImageError
from seedx_agent.memory.records import validate_namespace

from seedx_agent.engine import SeedXEngine
from seedx_agent.errors import (
    CapabilityMissingError,
    ConfigError,
    InvalidBoxError,
    InvalidImageError,
    InvalidPromptError,
)
from seedx_agent.pipeline.tokens import Box
from seedx_agent.protocol.tool_calls import edit_result, generate_result, ground_result, quote, recall_result

__all__ = [
    "MAX_RECALL_K",
    "ComprehendArgs",
    "EditImageArgs",
    "GenerateImageArgs",
    "GroundArgs",
    "RecallImagesArgs",
    "SeedXToolbox",
    "annotate_boxes",
    "make_seedx_tools",
    "memory_image_embedder",
]

logger = logging.getLogger(__name__)

MAX_RECALL_K = 20
MAX_IMAGES_PER_QUESTION = 8
_SEED_LIMIT = 2**31  # seeds drawn for unseeded calls stay small enough for every RNG and for JSON readers

# Errors the calling model can correct by changing its arguments: returned as tool error text.
_MODEL_FIXABLE = (
    UnknownImageError,
    InvalidMemoryRequestError,
    InvalidPromptError,
    InvalidImageError,
    InvalidBoxError,
    CapabilityMissingError,
)
_UNKNOWN_ID_FIX = "use an image id returned by an earlier tool call or found with recall_images"


# ---------------------------------------------------------------------------------------------- schemas


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComprehendArgs(_Args):
    """Arguments of ``comprehend``."""

    image_ids: list[str] = Field(
        min_length=1,
        max_length=MAX_IMAGES_PER_QUESTION,
        description="Memory ids of the images to look at (e.g. ['img_0123456789abcdef']), in the order the "
        "question refers to them.",
    )
    question: str = Field(description="The question about the image(s), in natural language.")


class GroundArgs(_Args):
    """Arguments of ``ground``."""

    image_id: str = Field(description="Memory id of the image to search in (e.g. 'img_0123456789abcdef').")
    phrase: str = Field(description="Short description of the object to locate, e.g. 'the red ball'.")


class GenerateImageArgs(_Args):
    """Arguments of ``generate_image``."""

    prompt: str = Field(description="Description of the image to create.")
    seed: int | None = Field(
        default=None,
        ge=0,
        lt=_SEED_LIMIT,
        description="Random seed for a reproducible result; leave empty for a fresh one (it is reported back).",
    )


class EditImageArgs(_Args):
    """Arguments of ``edit_image``."""

    image_id: str = Field(description="Memory id of the image to edit (e.g. 'img_0123456789abcdef').")
    instruction: str = Field(description="What to change, e.g. 'make the sky purple'.")
    seed: int | None = Field(
        default=None,
        ge=0,
        lt=_SEED_LIMIT,
        description="Random seed for a reproducible result; leave empty for a fresh one (it is reported back).",
    )


class RecallImagesArgs(_Args):
    """Arguments of ``recall_images``."""

    query: str | None = Field(
        default=None, description="Text describing the images to find (matched against their prompts/captions)."
    )
    image_id: str | None = Field(
        default=None, description="Memory id of an image; finds visually similar stored images instead."
    )
    k: int = Field(default=4, ge=1, le=MAX_RECALL_K, description="How many images to return at most.")


# ---------------------------------------------------------------------------------------------- helpers


def memory_image_embedder(engine: SeedXEngine) -> Callable[[list[Image.Image]], np.ndarray]:
    """An ``ImageMemory`` image embedder backed by the engine's SEED-X ViT (one unit vector per image)."""

    def embed_images(images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, 0), dtype=np.float32)
        return np.asarray(engine.image_embeddings(list(images)), dtype=np.float32)  # (n, vit_dim)

    return embed_images


def annotate_boxes(image: Image.Image, boxes: Sequence[Box]) -> Image.Image:
    """A copy of ``image`` with each box drawn as a red rectangle (pixel xyxy), for the model and the user."""
    annotated = image.convert("RGB").copy()
    draw = ImageDraw.Draw(annotated)
    line_width = max(1, min(annotated.size) // 100)
    for box in boxes:
        draw.rectangle(box.as_tuple(), outline=(255, 0, 0), width=line_width)
    return annotated


def _box_list(box: Box) -> list[float]:
    return [float(box.x1), float(box.y1), float(box.x2), float(box.y2)]


def _require_text(value: str, argument: str, example: str) -> str:
    if not value.strip():
        raise ToolException(f"{argument} is empty; pass a non-empty {argument}, e.g. {example!r}.")
    return value.strip()


@contextmanager
def _model_fixable(tool_name: str) -> Iterator[None]:
    """Turn errors the calling model can fix into ``ToolException`` with the problem and the fix."""
    try:
        yield
    except UnknownImageError as error:
        raise ToolException(f"{tool_name} failed: {error}. Fix: {_UNKNOWN_ID_FIX}.") from error
    except _MODEL_FIXABLE as error:
        raise ToolException(f"{tool_name} failed ({type(error).__name__}): {error}") from error


def _validation_message(error: ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in detail['loc']) or 'arguments'}: {detail['msg']}"
        for detail in error.errors(include_url=False)
    )
    return f"invalid tool arguments ({problems}). Fix the arguments to match the tool's schema and call it again."


# ---------------------------------------------------------------------------------------------- the factory


class SeedXToolbox:
    """The one place where SEED-X work meets the image memory: every generated or edited picture is stored
    here with its lineage (prompt, parent, operation, seed, model). The five tools and the story, slides and
    refine graphs all go through it; ``namespace`` scopes both the ids it reads and the records it writes."""

    def __init__(
        self,
        engine: SeedXEngine,
        memory: ImageMemory,
        namespace: str,
        default_steps: int | None = None,
        *,
        read_namespace: str | None = None,
    ) -> None:
        validate_namespace(namespace)
        if default_steps is not None and (
            isinstance(default_steps, bool) or not isinstance(default_steps, int) or default_steps < 1
        ):
            raise ConfigError(f"default_steps must be a positive int or None (model default), got {default_steps!r}")
        self.read_namespace = validate_namespace(read_namespace or namespace, argument="read_namespace")
        if not (namespace + "/").startswith(self.read_namespace + "/"):
            raise ConfigError(f"namespace {namespace!r} must lie inside read_namespace {self.read_namespace!r}")
        self.engine = engine
        self.memory = memory
        self.namespace = namespace
        self.default_steps = default_steps
        self.model_name = engine.model.config.name

    def _load(self, image_id: str) -> Image.Image:
        return self.memory.load(image_id, namespace=self.read_namespace)

    def load(self, image_id: str) -> Image.Image:
        """The pixels of a stored image of this namespace (``UnknownImageError`` names a bad id)."""
        return self._load(image_id)

    def render(
        self,
        prompt: str,
        *,
        seed: int,
        context_ids: Sequence[str] = (),
        operation: str = "generate",
        caption: str | None = None,
    ) -> ImageRecord:
        """Generate a picture (reading ``context_ids`` pictures first, SEED-X-I style) and store it."""
        context = [self._load(image_id) for image_id in context_ids]
        extra: dict[str, Any] = {"context": context} if context else {}
        result = self.engine.generate_image(prompt, seed=seed, num_inference_steps=self.default_steps, **extra)
        return self.memory.add(
            result.image,
            kind="generated",
            namespace=self.namespace,
            prompt=prompt,
            caption=caption,
            operation=operation,
            seed=seed,
            model=self.model_name,
        )

    def revise(
        self,
        image_id: str,
        instruction: str,
        *,
        seed: int,
        operation: str = "edit",
        prompt: str | None = None,
        caption: str | None = None,
    ) -> ImageRecord:
        """Edit a stored picture into a new stored child (``parent_id`` = ``image_id``); the original is kept.

        ``prompt`` records what the new picture should show (default: the instruction), so text recall finds it.
        """
        source = self._load(image_id)
        result = self.engine.edit_image(source, instruction, seed=seed, num_inference_steps=self.default_steps)
        return self.memory.add(
            result.image,
            kind="edited",
            namespace=self.namespace,
            prompt=prompt or instruction,
            caption=caption,
            parent_id=image_id,
            operation=operation,
            seed=seed,
            model=self.model_name,
        )

    def comprehend(self, image_ids: list[str], question: str) -> tuple[str, dict[str, Any]]:
        """Answer a question about one or more stored images (description, VQA, comparison, reading text)."""
        question = _require_text(question, "question", "What is in the picture?")
        with _model_fixable("comprehend"):
            images = [self._load(image_id) for image_id in image_ids]
            result = self.engine.comprehend(images, question)
        artifact = {"image_ids": list(image_ids), "answer": result.text, "boxes": [_box_list(b) for b in result.boxes]}
        return result.text, artifact

    def ground(self, image_id: str, phrase: str) -> tuple[str, dict[str, Any]]:
        """Locate an object in a stored image: returns pixel boxes [x1, y1, x2, y2] and an annotated copy's id."""
        phrase = _require_text(phrase, "phrase", "the red ball")
        with _model_fixable("ground"):
            image = self._load(image_id)
            result = self.engine.ground(image, phrase)
        boxes = [_box_list(box) for box in result.boxes]
        artifact: dict[str, Any] = {"image_id": image_id, "phrase": phrase, "boxes": boxes, "annotated_image_id": None}
        if not result.boxes:
            return ground_result(phrase, image_id, [], None), artifact
        record = self.memory.add(
            annotate_boxes(image, result.boxes),
            kind="generated",
            namespace=self.namespace,
            prompt=f"boxes for {phrase}",
            parent_id=image_id,
            operation="annotate",
            model=self.model_name,
        )
        artifact["annotated_image_id"] = record.id
        return ground_result(phrase, image_id, boxes, record.id), artifact

    def _seed(self, seed: int | None) -> int:
        return seed if seed is not None else secrets.randbelow(_SEED_LIMIT)

    def generate_image(self, prompt: str, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        """Create a new image from a text description; returns the new image's memory id."""
        prompt = _require_text(prompt, "prompt", "a red ball on a wooden table")
        used_seed = self._seed(seed)
        with _model_fixable("generate_image"):
            record = self.render(prompt, seed=used_seed)
        logger.info("generated %s for prompt %r (seed %d)", record.id, prompt, used_seed)
        content = generate_result(record.id, record.width, record.height, used_seed, prompt)
        return content, {"image_id": record.id, "seed": used_seed, "prompt": prompt}

    def edit_image(self, image_id: str, instruction: str, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        """Edit a stored image following an instruction; the result is a new image id (the original is kept)."""
        instruction = _require_text(instruction, "instruction", "make the sky purple")
        used_seed = self._seed(seed)
        with _model_fixable("edit_image"):
            record = self.revise(image_id, instruction, seed=used_seed)
        logger.info("edited %s into %s with %r (seed %d)", image_id, record.id, instruction, used_seed)
        content = edit_result(image_id, instruction, record.id, used_seed)
        return content, {"image_id": record.id, "parent_id": image_id, "seed": used_seed, "instruction": instruction}

    def recall_images(
        self, query: str | None = None, image_id: str | None = None, k: int = 4
    ) -> tuple[str, dict[str, Any]]:
        """Find stored images by a text description or by visual similarity to a stored image id."""
        if (query is None) == (image_id is None):
            raise ToolException(
                "recall_images needs exactly one of query (text) or image_id (similar images); "
                f"got query={query!r}, image_id={image_id!r}. Pass only one of them."
            )
        with _model_fixable("recall_images"):
            if query is not None:
                hits = self.memory.search_text(
                    _require_text(query, "query", "a red ball"), k=k, namespace=self.namespace
                )
                about = f"matching {quote(query)}"
            else:
                self.memory.get(image_id, namespace=self.namespace)  # refuse ids outside this namespace
                hits = self.memory.search_image(image_id, k=k, namespace=self.namespace)
                about = f"similar to {image_id}"
        found = [
            {
                "image_id": hit.record.id,
                "score": float(hit.score),
                "kind": hit.record.kind,
                "prompt": hit.record.prompt,
                "parent_id": hit.record.parent_id,
            }
            for hit in hits
        ]
        return recall_result(about, found), {"images": found}


def make_seedx_tools(
    engine: SeedXEngine, memory: ImageMemory, *, namespace: str, default_steps: int | None = None
) -> list[BaseTool]:
    """The five SEED-X tools bound to ``engine`` and ``memory``; new images are stored under ``namespace``.

    Ids are looked up only inside ``namespace`` (and below it). ``default_steps`` overrides the diffusion
    step count of generation and editing (``None`` keeps the model's default).
    """
    box = SeedXToolbox(engine, memory, namespace, default_steps)
    specs: list[tuple[Callable[..., tuple[str, dict[str, Any]]], type[BaseModel]]] = [
        (box.comprehend, ComprehendArgs),
        (box.ground, GroundArgs),
        (box.generate_image, GenerateImageArgs),
        (box.edit_image, EditImageArgs),
        (box.recall_images, RecallImagesArgs),
    ]
    return [
        StructuredTool.from_function(
            func=function,
            name=function.__name__,
            description=(function.__doc__ or "").strip() + " Images are referred to by memory ids only.",
            args_schema=schema,
            response_format="content_and_artifact",
            handle_tool_error=True,
            handle_validation_error=_validation_message,
        )
        for function, schema in specs
    ]
