"""On-disk pieces of the memory root: content-addressed image files, the write-ahead journal, the root lock.

Layout of a memory root::

    root/
      .lock                 lock file (held while an ImageMemory is open)
      .lock.owner           pid of the holder, for error messages only
      memory.json           manifest: format version and embedding dimensions
      journal.jsonl         intents of the transaction in flight (empty when idle)
      images/ab/abcd....png content-addressed PNGs (sha256 of the canonical PNG bytes)
      chroma/               chroma's PersistentClient directory
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from PIL import Image

from .errors import MemoryLockedError

__all__ = ["CanonicalImage", "ContentStore", "Journal", "RootLock", "atomic_write_bytes", "canonical_image"]

logger = logging.getLogger(__name__)

_STORED_NAME_PATTERN = re.compile(r"([0-9a-f]{64})\.png")
TEMP_SUFFIX = ".tmp"


def _fsync_directory(directory: Path) -> None:
    """Make a rename/unlink in ``directory`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either nothing or the whole file: temp + fsync + os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_path = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


@dataclass(frozen=True)
class CanonicalImage:
    """An image reduced to its canonical stored form: RGB pixels as PNG bytes, and their sha256."""

    png_bytes: bytes
    content_hash: str
    width: int
    height: int


def canonical_image(image: Image.Image) -> CanonicalImage:
    """Encode ``image`` as canonical PNG: RGB, no ancillary chunks (ICC, EXIF, text), fixed compression.

    The pixels are copied into a fresh image first so metadata carried in ``image.info`` cannot leak into the
    bytes; identical pixels therefore give identical bytes (and one stored file) with a given Pillow build.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    bare = Image.frombytes("RGB", rgb.size, rgb.tobytes())
    buffer = io.BytesIO()
    bare.save(buffer, format="PNG", compress_level=6)
    png_bytes = buffer.getvalue()
    return CanonicalImage(
        png_bytes=png_bytes,
        content_hash=hashlib.sha256(png_bytes).hexdigest(),
        width=bare.width,
        height=bare.height,
    )


class ContentStore:
    """Image files addressed by content hash under ``images/<first two hex>/<hash>.png``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, content_hash: str) -> Path:
        """Where the file with this (already validated, 64-hex) hash lives."""
        return self.directory / content_hash[:2] / f"{content_hash}.png"

    def exists(self, content_hash: str) -> bool:
        """Whether the file for ``content_hash`` is present."""
        return self.path_for(content_hash).is_file()

    def write(self, image: CanonicalImage) -> bool:
        """Store the bytes unless a file with the same hash exists; True if a new file was written."""
        path = self.path_for(image.content_hash)
        if path.is_file():
            return False
        atomic_write_bytes(path, image.png_bytes)
        return True

    def remove(self, content_hash: str) -> None:
        """Delete the file for ``content_hash`` if present (and its shard folder once empty)."""
        path = self.path_for(content_hash)
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()
        except OSError:
            pass  # not empty (or already gone): fine
        _fsync_directory(path.parent if path.parent.exists() else self.directory)

    def scan(self) -> Iterator[tuple[Path, str | None]]:
        """Every file under the directory with its content hash, or None for temp files and foreign files."""
        if not self.directory.is_dir():
            return
        for shard in sorted(self.directory.iterdir()):
            if not shard.is_dir():
                yield shard, None
                continue
            for path in sorted(shard.iterdir()):
                match = _STORED_NAME_PATTERN.fullmatch(path.name)
                yield path, (match.group(1) if match and match.group(1)[:2] == shard.name else None)


class Journal:
    """Write-ahead intents of the transactions in flight, one JSON object per line.

    ``begin`` appends and fsyncs an intent (a dict with a ``"txn"`` key) before chroma is touched; a transaction
    may append several (``add_many`` writes one per batch). ``commit(txn)`` marks it complete: the file is
    truncated when no other transaction is open, else a ``{"op": "commit", "txn": ...}`` line is appended and
    fsynced (never a rewrite, so a crash cannot resurrect the intents of a transaction that committed).
    Writers are serialised by the memory's write lock and the root lock; after a crash, ``pending`` gives the
    intents of the transactions that did not commit; ``read`` skips a last line torn by the crash.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._open: set[str] = set()  # transactions begun and not committed

    def begin(self, entry: dict[str, Any]) -> None:
        """Durably record the intent ``entry`` (JSON-serialisable, with a ``"txn"`` key naming its transaction)."""
        self._append(entry)
        self._open.add(str(entry.get("txn")))

    def commit(self, txn: str | None = None) -> None:
        """Mark ``txn`` complete (its intents no longer need repair), or every transaction when ``txn`` is None."""
        if txn is None:
            self._open.clear()
        else:
            self._open.discard(txn)
        if self._open:  # another transaction is still in flight: its intents must stay
            self._append({"op": "commit", "txn": txn})
            return
        with open(self.path, "wb") as handle:
            handle.flush()
            os.fsync(handle.fileno())

    def _append(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":"), sort_keys=True) + "\n"
        with open(self.path, "ab") as handle:
            handle.write(line.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())

    def pending(self) -> tuple[list[dict[str, Any]], int]:
        """The intents on disk of transactions without a commit line, and the number of torn lines."""
        entries, torn = self.read()
        committed = {entry.get("txn") for entry in entries if entry.get("op") == "commit"}
        return [e for e in entries if e.get("op") != "commit" and ("txn" not in e or e["txn"] not in committed)], torn

    def read(self) -> tuple[list[dict[str, Any]], int]:
        """The intents on disk and the number of unreadable (torn) lines."""
        if not self.path.is_file():
            return [], 0
        entries: list[dict[str, Any]] = []
        torn = 0
        for raw_line in self.path.read_bytes().splitlines():
            if not raw_line.strip():
                continue
            try:
                entry = json.loads(raw_line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                torn += 1
                continue
            if isinstance(entry, dict):
                entries.append(entry)
            else:
                torn += 1
        return entries, torn


_HELD_ROOTS: set[str] = set()
_HELD_ROOTS_GUARD = threading.Lock()


class RootLock:
    """Exclusive hold on a memory root: an in-process registry plus an OS file lock on ``root/.lock``.

    The registry gives a precise message for a second open in the same process; the file lock (flock on
    POSIX, released by the OS when the holder dies, so SIGKILL leaves no stale lock) covers other processes.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._key = str(root.resolve())
        self._file_lock = FileLock(str(root / ".lock"), timeout=0)
        self._owner_path = root / ".lock.owner"
        self._held = False

    def acquire(self) -> None:
        """Take the lock or raise ``MemoryLockedError`` naming the root and the fix."""
        with _HELD_ROOTS_GUARD:
            if self._key in _HELD_ROOTS:
                raise MemoryLockedError(
                    f"the image memory at {self.root} is already open in this process; reuse that ImageMemory "
                    "object (share it between tools and graphs) or close() it before opening the root again",
                    root=self.root,
                )
            try:
                self._file_lock.acquire()
            except Timeout:
                owner = self._read_owner()
                raise MemoryLockedError(
                    f"the image memory at {self.root} is in use by another process{owner}; close the memory in "
                    "that process (or stop it), use a different root, or share one chroma server "
                    "(client=ChromaServer(...)) with a separate root per process",
                    root=self.root,
                ) from None
            _HELD_ROOTS.add(self._key)
            self._held = True
        try:
            self._owner_path.write_text(str(os.getpid()), encoding="utf-8")
        except OSError:
            logger.debug("could not write %s", self._owner_path)

    def _read_owner(self) -> str:
        try:
            pid = self._owner_path.read_text(encoding="utf-8").strip()
        except OSError:
            return ""
        return f" (pid {pid})" if pid.isdigit() else ""

    def release(self) -> None:
        """Give the root back (idempotent)."""
        with _HELD_ROOTS_GUARD:
            if not self._held:
                return
            self._held = False
            _HELD_ROOTS.discard(self._key)
            self._file_lock.release()
