"""The error hierarchy: every problem a caller can cause or fix is a ``SeedXError``.

Messages name the bad value and the fix. Programming errors inside the library stay ordinary
Python exceptions so they are not mistaken for user mistakes.
"""

from __future__ import annotations

__all__ = [
    "CapabilityMissingError",
    "CheckpointError",
    "ConfigError",
    "CorruptCheckpointError",
    "DependencyMissingError",
    "ImageTokenMismatchError",
    "ImageTooLargeError",
    "InvalidBoxError",
    "InvalidImageError",
    "InvalidPromptError",
    "NonFiniteWeightError",
    "ResourceExhaustedError",
    "SeedXError",
    "StateDictMismatchError",
    "UnknownPresetError",
    "UnsafeCheckpointError",
]


class SeedXError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(SeedXError):
    """A configuration value or runtime option is invalid.

    Deliberately not a ``ValueError``: pydantic would wrap it into a ValidationError and hide the type.
    """


class UnknownPresetError(ConfigError, KeyError):
    """A preset / variant name that does not exist was requested."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class InvalidImageError(SeedXError, ValueError):
    """An image could not be read or has a shape/mode we cannot use."""


class ImageTooLargeError(InvalidImageError):
    """An image exceeds the pixel limit (decompression-bomb guard)."""


class InvalidPromptError(SeedXError, ValueError):
    """A prompt or message list is empty, too long or malformed."""


class InvalidBoxError(SeedXError, ValueError):
    """A bounding box is out of range, inverted or malformed."""


class ImageTokenMismatchError(SeedXError, ValueError):
    """The number of image placeholder positions differs from the number of feature vectors."""


class CheckpointError(SeedXError, OSError):
    """A checkpoint folder or file is missing or unreadable."""


class StateDictMismatchError(CheckpointError):
    """Strict loading found missing, unexpected or mis-shaped keys (all of them are listed)."""

    def __init__(
        self,
        component: str,
        *,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] | None = None,
    ) -> None:
        self.component = component
        self.missing = sorted(missing or [])
        self.unexpected = sorted(unexpected or [])
        self.mismatched = sorted(mismatched or [])
        lines = [f"checkpoint for {component!r} does not match the model:"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): " + ", ".join(self.missing[:50]))
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): " + ", ".join(self.unexpected[:50]))
        if self.mismatched:
            lines.append(
                f"  mis-shaped keys ({len(self.mismatched)}): "
                + ", ".join(f"{k} checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched[:50])
            )
        lines.append("  check that the checkpoint and the preset/config belong together.")
        super().__init__("\n".join(lines))


class CorruptCheckpointError(CheckpointError):
    """A weight file differs from its manifest (size or sha256): corrupted on disk or in transit."""

    def __init__(self, message: str, *, path: str, expected: str, actual: str) -> None:
        self.path = path
        self.expected = expected
        self.actual = actual
        super().__init__(message)


class NonFiniteWeightError(CheckpointError):
    """A checkpoint tensor holds NaN or infinite values (it would load and answer garbage)."""

    def __init__(self, message: str, *, tensor: str, source: str, nan: int, inf: int) -> None:
        self.tensor = tensor
        self.source = source
        self.nan = nan
        self.inf = inf
        super().__init__(message)


class UnsafeCheckpointError(CheckpointError):
    """A pickle checkpoint was found but pickle loading was not explicitly allowed."""


class CapabilityMissingError(SeedXError, RuntimeError):
    """The loaded components cannot do what was asked (e.g. editing without the edit model)."""


class DependencyMissingError(SeedXError, ImportError):
    """An optional dependency (e.g. bitsandbytes) is needed for the requested feature."""


class ResourceExhaustedError(SeedXError, RuntimeError):
    """The device ran out of memory; the message says which component and what to try."""
