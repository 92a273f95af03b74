"""Errors of the image memory; all of them are ``SeedXError``s so callers can catch one base class.

Tools turn ``UnknownImageError`` (and its child ``InvalidImageIdError``) into a message the planner model can
act on ("that image id does not exist"), so both keep the offending value in ``.image_id``.
"""

from __future__ import annotations

from pathlib import Path

from seedx_agent.errors import SeedXError

__all__ = [
    "EmbeddingMismatchError",
    "ImageMemoryError",
    "InvalidImageIdError",
    "InvalidMemoryRequestError",
    "MemoryBackendError",
    "MemoryClosedError",
    "MemoryLockedError",
    "UnknownImageError",
]


class ImageMemoryError(SeedXError):
    """Base class of every error raised by ``seedx_agent.memory``."""


class UnknownImageError(ImageMemoryError, LookupError):
    """No image record with this id exists (in this memory, or in the requested namespace)."""

    def __init__(self, message: str, *, image_id: object = None) -> None:
        super().__init__(message)
        self.image_id = image_id


class InvalidImageIdError(UnknownImageError, ValueError):
    """The value is not an image id at all (wrong type or shape, e.g. a file path); ids are never paths."""


class InvalidMemoryRequestError(ImageMemoryError, ValueError):
    """An argument to a memory call is malformed (unknown kind, bad namespace, bad filter, k out of range...)."""


class EmbeddingMismatchError(ImageMemoryError, ValueError):
    """An embedder returned vectors of the wrong count/shape, or of a dimension this memory was not built with."""


class MemoryLockedError(ImageMemoryError, RuntimeError):
    """Another ``ImageMemory`` (in this process or another one) holds the root directory."""

    def __init__(self, message: str, *, root: Path) -> None:
        super().__init__(message)
        self.root = root


class MemoryClosedError(ImageMemoryError, RuntimeError):
    """The memory was used after ``close()``."""


class MemoryBackendError(ImageMemoryError, OSError):
    """The chroma backend could not be opened or reached (e.g. the chroma server is down)."""
