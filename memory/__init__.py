"""The agent's image memory (``seedx_agent.memory``): images by opaque id, lineage, namespaces and search.

``ImageMemory`` stores images once (content-addressed PNG files) with records and embeddings in chroma;
``ImageMemoryStore`` exposes the same root as a LangGraph ``BaseStore`` for graphs' long-term memory.
Images cross the agent boundary only as ids issued here; no caller ever supplies a file path.
"""

from __future__ import annotations

from .backend import ChromaServer, parse_chroma_address
from .embedders import HashingTextEmbeddings, ImageEmbedder
from .errors import (
    EmbeddingMismatchError,
    ImageMemoryError,
    InvalidImageIdError,
    InvalidMemoryRequestError,
    MemoryBackendError,
    MemoryClosedError,
    MemoryLockedError,
    UnknownImageError,
)
from .langgraph_store import ImageMemoryStore
from .records import ImageHit, ImageKind, ImageRecord, RepairReport, validate_image_id
from .store import DEFAULT_MIN_IMAGE_SCORE, DEFAULT_MIN_TEXT_SCORE, ImageMemory

__all__ = [
    "DEFAULT_MIN_IMAGE_SCORE",
    "DEFAULT_MIN_TEXT_SCORE",
    "ChromaServer",
    "EmbeddingMismatchError",
    "HashingTextEmbeddings",
    "ImageEmbedder",
    "ImageHit",
    "ImageKind",
    "ImageMemory",
    "ImageMemoryError",
    "ImageMemoryStore",
    "ImageRecord",
    "InvalidImageIdError",
    "InvalidMemoryRequestError",
    "MemoryBackendError",
    "MemoryClosedError",
    "MemoryLockedError",
    "RepairReport",
    "UnknownImageError",
    "parse_chroma_address",
    "validate_image_id",
]
