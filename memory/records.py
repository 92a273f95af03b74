"""Typed records of the image memory and the rules for ids, namespaces and metadata filters.

Everything that crosses the agent boundary is validated here: ids are opaque (``img_`` + 16 lowercase hex
characters, random), never paths; namespaces are ``/``-separated segments such as
``"user:alice/thread:1/story:x"``; metadata filters may only name public record fields.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from seedx_agent.pipeline.prompts import check_text
from seedx_agent.protocol.tool_calls import IMAGE_ID_RE

from .errors import InvalidImageIdError, InvalidMemoryRequestError

__all__ = [
    "FILTERABLE_FIELDS",
    "MAX_NAMESPACE_DEPTH",
    "ImageHit",
    "ImageKind",
    "ImageRecord",
    "RepairReport",
    "new_image_id",
    "validate_image_id",
    "validate_namespace",
    "validate_text",
]

ImageKind = Literal["input", "generated", "edited"]
IMAGE_KINDS: tuple[str, ...] = get_args(ImageKind)

_IMAGE_ID_PATTERN = IMAGE_ID_RE  # the id form, defined once in the core (the planner protocol reads it too)
_CONTENT_HASH_PATTERN = re.compile(r"[0-9a-f]{64}")
_ANCHORED_ID_PATTERN = f"^{_IMAGE_ID_PATTERN.pattern}$"  # pydantic patterns are searched, not full-matched
# A namespace segment: no separator, no control characters, no surrounding whitespace.
_NAMESPACE_SEGMENT_PATTERN = re.compile(r"[^/\x00-\x1f\x7f]+")
MAX_NAMESPACE_DEPTH = 8
MAX_NAMESPACE_SEGMENT_LENGTH = 128
MAX_SEED = 2**63 - 1

# Record fields a caller may use in ``where`` filters (chroma metadata keys of the same name).
FILTERABLE_FIELDS: frozenset[str] = frozenset(
    {
        "kind",
        "namespace",
        "prompt",
        "caption",
        "parent_id",
        "operation",
        "seed",
        "model",
        "created_at",
        "content_hash",
        "width",
        "height",
    }
)
_COMPARISON_OPERATORS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"})
_LOGICAL_OPERATORS = frozenset({"$and", "$or"})


def new_image_id() -> str:
    """A fresh random opaque image id (``img_`` + 64 random bits as hex)."""
    return f"img_{secrets.token_hex(8)}"


def validate_image_id(image_id: object) -> str:
    """Return ``image_id`` if it has the exact id shape, else raise ``InvalidImageIdError``.

    This is the only gate between caller-supplied strings and the store, so anything path-like
    (``../../etc/passwd``, ``/tmp/x.png``), padded or of the wrong type is refused here.
    """
    if not isinstance(image_id, str):
        raise InvalidImageIdError(
            f"image id must be a string like 'img_0123456789abcdef', got {type(image_id).__name__} {image_id!r}",
            image_id=image_id,
        )
    if _IMAGE_ID_PATTERN.fullmatch(image_id) is None:
        shown = image_id if len(image_id) <= 80 else image_id[:77] + "..."
        raise InvalidImageIdError(
            f"{shown!r} is not an image id: ids look like 'img_' followed by 16 lowercase hex digits "
            "(e.g. 'img_0123456789abcdef') and are issued by the memory; file paths are never accepted",
            image_id=image_id,
        )
    return image_id


def validate_text(text: str, argument: str) -> str:
    """``text`` when every character can be stored and embedded, else ``InvalidMemoryRequestError`` naming the
    position of the first bad one (a lone surrogate) and the fix; the library-wide rule of ``prompts.check_text``."""
    return check_text(text, argument, error=InvalidMemoryRequestError)


def validate_namespace(namespace: object, *, argument: str = "namespace") -> str:
    """Return a well-formed namespace (``seg/seg/...``, at most 8 segments), else raise."""
    if not isinstance(namespace, str):
        raise InvalidMemoryRequestError(
            f"{argument} must be a string such as 'user:alice/thread:1', got {type(namespace).__name__} {namespace!r}"
        )
    validate_text(namespace, argument)
    segments = namespace.split("/")
    if len(segments) > MAX_NAMESPACE_DEPTH:
        raise InvalidMemoryRequestError(
            f"{argument} {namespace!r} has {len(segments)} segments; at most {MAX_NAMESPACE_DEPTH} are allowed"
        )
    for segment in segments:
        if (
            not segment
            or segment != segment.strip()
            or len(segment) > MAX_NAMESPACE_SEGMENT_LENGTH
            or _NAMESPACE_SEGMENT_PATTERN.fullmatch(segment) is None
        ):
            raise InvalidMemoryRequestError(
                f"{argument} {namespace!r} is malformed: use '/'-separated, non-empty segments of at most "
                f"{MAX_NAMESPACE_SEGMENT_LENGTH} printable characters without surrounding spaces, "
                "e.g. 'user:alice/thread:1/story:x'"
            )
    return namespace


def namespace_prefix_keys(namespace: str) -> dict[str, str]:
    """Metadata keys ``ns_0..ns_{d-1}`` holding each prefix of ``namespace`` (chroma has no prefix match)."""
    segments = namespace.split("/")
    return {f"ns_{depth}": "/".join(segments[: depth + 1]) for depth in range(len(segments))}


def namespace_clause(namespace: str) -> dict[str, Any]:
    """A chroma ``where`` clause matching ``namespace`` and every namespace below it."""
    depth = len(namespace.split("/")) - 1
    return {f"ns_{depth}": namespace}


def validate_where(where: object) -> dict[str, Any] | None:
    """Check a caller's metadata filter: chroma syntax over ``FILTERABLE_FIELDS`` only."""
    if where is None:
        return None
    if not isinstance(where, dict) or not where:
        raise InvalidMemoryRequestError(
            f"where must be a non-empty dict such as {{'kind': 'generated'}} or None, got {where!r}"
        )
    for key, value in where.items():
        if key in _LOGICAL_OPERATORS:
            if not isinstance(value, list) or not value:
                raise InvalidMemoryRequestError(f"where[{key!r}] must be a non-empty list of filters, got {value!r}")
            for clause in value:
                validate_where(clause)
        elif key in FILTERABLE_FIELDS:
            _validate_condition(key, value)
        else:
            raise InvalidMemoryRequestError(
                f"where names an unknown field {key!r}; filterable fields are {sorted(FILTERABLE_FIELDS)} "
                "combined with '$and' / '$or'"
            )
    return where


def _validate_condition(field: str, condition: object) -> None:
    scalar = (str, int, float, bool)
    if isinstance(condition, scalar):
        _validate_operand(field, condition)
        return
    if isinstance(condition, dict) and len(condition) == 1:
        ((operator, operand),) = condition.items()
        if operator in ("$in", "$nin"):
            if isinstance(operand, list) and operand and all(isinstance(item, scalar) for item in operand):
                for item in operand:
                    _validate_operand(field, item)
                return
        elif operator in _COMPARISON_OPERATORS and isinstance(operand, scalar):
            _validate_operand(field, operand)
            return
    raise InvalidMemoryRequestError(
        f"where[{field!r}] = {condition!r} is not a valid condition: use a plain value or one operator of "
        f"{sorted(_COMPARISON_OPERATORS)} (e.g. {{'$gte': 512}}; '$in'/'$nin' take a non-empty list)"
    )


def _validate_operand(field: str, operand: object) -> None:
    if isinstance(operand, str):
        validate_text(operand, f"where[{field!r}]")


def combine_where(*clauses: dict[str, Any] | None) -> dict[str, Any] | None:
    """AND together chroma filters, splitting multi-key dicts (chroma wants one key per clause)."""
    flat: list[dict[str, Any]] = []
    for clause in clauses:
        if clause:
            flat.extend({key: value} for key, value in clause.items())
    if not flat:
        return None
    if len(flat) == 1:
        return flat[0]
    return {"$and": flat}


class ImageRecord(BaseModel):
    """One stored image: its opaque id, provenance (kind, prompt, seed, model), lineage and content."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=_ANCHORED_ID_PATTERN)
    kind: ImageKind
    namespace: str
    prompt: str | None = None
    caption: str | None = None
    parent_id: str | None = Field(default=None, pattern=_ANCHORED_ID_PATTERN)
    operation: str | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, strict=True)
    model: str | None = None
    created_at: datetime
    content_hash: str = Field(pattern=f"^{_CONTENT_HASH_PATTERN.pattern}$")
    width: int = Field(gt=0)
    height: int = Field(gt=0)

    @property
    def text(self) -> str:
        """The text indexed for text search: prompt and caption joined by a newline ('' if neither)."""
        return "\n".join(part for part in (self.prompt, self.caption) if part and part.strip())

    def to_metadata(self) -> dict[str, str | int | float]:
        """Chroma metadata (no ``None`` values allowed there) plus the namespace-prefix keys."""
        metadata: dict[str, str | int | float] = {
            "kind": self.kind,
            "namespace": self.namespace,
            "created_at": self.created_at.timestamp(),
            "content_hash": self.content_hash,
            "width": self.width,
            "height": self.height,
        }
        for field in ("prompt", "caption", "parent_id", "operation", "seed", "model"):
            value = getattr(self, field)
            if value is not None:
                metadata[field] = value
        metadata.update(namespace_prefix_keys(self.namespace))
        return metadata

    @classmethod
    def from_metadata(cls, image_id: str, metadata: dict[str, Any]) -> ImageRecord:
        """Rebuild a record from what ``to_metadata`` stored."""
        fields = {key: value for key, value in metadata.items() if key in FILTERABLE_FIELDS}
        fields["created_at"] = datetime.fromtimestamp(float(metadata["created_at"]), tz=timezone.utc)
        return cls(id=image_id, **fields)


def utc_now_ms() -> datetime:
    """Current UTC time truncated to milliseconds, so it survives the float round trip through chroma exactly."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class ImageHit(BaseModel):
    """A search result: the record and its cosine similarity to the query (1 = same direction)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    record: ImageRecord
    score: float


class RepairReport(BaseModel):
    """What ``ImageMemory.repair`` found and fixed; all zero on a clean store."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rolled_back_adds: int = 0
    """Records of add transactions that were journalled but never committed (removed)."""
    completed_deletes: int = 0
    """Records of delete transactions that were journalled but not finished (finished now)."""
    torn_journal_lines: int = 0
    """Journal lines cut short by a crash while being written (ignored)."""
    records_without_file: int = 0
    """Records whose image file was missing (removed)."""
    dangling_text_entries: int = 0
    """Text-index entries without a visual record (removed)."""
    incomplete_records: int = 0
    """Records with a prompt/caption but no text-index entry (removed)."""
    orphan_files: int = 0
    """Image files no record points at (deleted)."""
    temp_files: int = 0
    """Leftover temporary files of interrupted atomic writes (deleted)."""
    unknown_files: int = 0
    """Files under ``images/`` that the memory did not write (left alone, logged)."""

    @property
    def clean(self) -> bool:
        """True when nothing had to be repaired."""
        return not any(value for name, value in self if name != "unknown_files")
