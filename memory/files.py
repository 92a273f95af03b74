"""On-disk pieces of the memory root: content-addressed image files, the write-ahead journal, the root lock.

Layout of a memory root::

    root/
      .lock                 lock file (held while an ImageMemory is open: exclusive, or shared in shared mode)
      .lock.owner           {"pid", "mode"} of the last holder, for error messages only
      .write.lock           shared mode: the cross-process write lock (module ``shared``)
      memory.json           manifest: format version and embedding dimensions
      journal.jsonl         intents of the transaction in flight (empty when idle; single-process mode)
      journals/             shared mode: <writer>.jsonl per process and <writer>.alive, locked while it lives
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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from PIL import Image

from .errors import MemoryLockedError
from .shared import DEFAULT_LOCK_TIMEOUT, HAS_FLOCK, FlockFile, read_owner, require_flock

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

    @staticmethod
    def is_temp(path: Path) -> bool:
        """True for the temporary file of an atomic write (``atomic_write_bytes``), left behind if it was cut short."""
        return path.name.endswith(TEMP_SUFFIX) and path.is_file()

    def remove_temp_files(self) -> int:
        """Delete the temporary files of interrupted writes; how many. Only while no live writer can be mid-write."""
        removed = 0
        for path, content_hash in self.scan():
            if content_hash is None and self.is_temp(path):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

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


_HELD_ROOTS: dict[str, list[str]] = {}  # resolved root -> modes of the opens held by this process
_HELD_ROOTS_GUARD = threading.Lock()


class RootLock:
    """Hold on a memory root: an in-process registry plus an OS file lock on ``root/.lock``.

    Single-process mode (the default) holds it exclusively; shared mode (``shared=True``, see ``memory.shared``)
    holds it shared with the other processes of that mode, and exclusively only while it is the first one in, so
    it can run the full repair alone. The registry gives a precise message for a second open in the same process;
    the file lock (``flock`` on POSIX, released by the OS when the holder dies, so SIGKILL leaves no stale lock)
    covers other processes.
    """

    def __init__(self, root: Path, *, shared: bool = False, timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
        if shared:
            require_flock()
        self.root = root
        self.shared = shared
        self.alone = False
        """True while this holder has the root to itself (single-process mode, or a shared opener before
        ``share()``): only then may the full repair sweep the root."""
        self._timeout = timeout
        self._key = str(root.resolve())
        self._flock = FlockFile(root / ".lock") if HAS_FLOCK else None
        self._file_lock = None if HAS_FLOCK else FileLock(str(root / ".lock"), timeout=0)
        self._owner_path = root / ".lock.owner"
        self._held = False

    @property
    def mode(self) -> str:
        """``"shared"`` or ``"single"``."""
        return "shared" if self.shared else "single"

    def acquire(self) -> None:
        """Take the lock or raise ``MemoryLockedError`` naming the root and the fix."""
        with _HELD_ROOTS_GUARD:
            modes = _HELD_ROOTS.get(self._key, [])
            if modes and (not self.shared or "single" in modes):
                hint = (
                    "reuse that ImageMemory object (share it between tools and graphs) or close() it before opening "
                    "the root again"
                )
                if "shared" in modes:
                    hint = "open it with shared=True too, or close() the shared one first"
                raise MemoryLockedError(
                    f"the image memory at {self.root} is already open in this process"
                    + (" in shared mode" if "shared" in modes else " in single-process mode" if self.shared else "")
                    + f"; {hint}",
                    root=self.root,
                )
            if self.shared:
                self._acquire_shared()
            else:
                self._acquire_single()
            _HELD_ROOTS.setdefault(self._key, []).append(self.mode)
            self._held = True
        self._write_owner()

    def _acquire_single(self) -> None:
        if self._flock is not None:
            taken = self._flock.try_lock(exclusive=True)
        else:
            try:
                self._file_lock.acquire()  # type: ignore[union-attr]
                taken = True
            except Timeout:
                taken = False
        if not taken:
            owner = read_owner(self._owner_path)
            if owner.get("mode") == "shared":
                raise MemoryLockedError(
                    f"the image memory at {self.root} is open in shared mode by other processes; open it the same "
                    "way (shared=True with their chroma server), or stop them first",
                    root=self.root,
                )
            pid = owner.get("pid")
            raise MemoryLockedError(
                f"the image memory at {self.root} is in use by another process"
                + (f" (pid {pid})" if isinstance(pid, int) else "")
                + "; close the memory in that process (or stop it), use a different root, or open every process "
                "in shared mode (shared=True with one chroma server, client=ChromaServer(...))",
                root=self.root,
            )
        self.alone = True

    def _acquire_shared(self) -> None:
        assert self._flock is not None
        if self._flock.try_lock(exclusive=True):  # first in: repair alone, then share() lets the others in
            self.alone = True
            return
        deadline = time.monotonic() + self._timeout
        while not self._flock.try_lock(exclusive=False):
            owner = read_owner(self._owner_path)
            if owner.get("mode") == "single":
                pid = owner.get("pid")
                raise MemoryLockedError(
                    f"the image memory at {self.root} is open in single-process mode by another process"
                    + (f" (pid {pid})" if isinstance(pid, int) else "")
                    + "; close it there, or open it there with shared=True too",
                    root=self.root,
                )
            if time.monotonic() >= deadline:
                raise MemoryLockedError(
                    f"the image memory at {self.root} stayed locked for {self._timeout:.0f} s (the first shared "
                    "opener repairs it alone); raise lock_timeout= or look for a stuck process",
                    root=self.root,
                )
            time.sleep(0.05)

    def share(self) -> None:
        """Shared mode, first opener: after the repair, turn the exclusive hold into a shared one."""
        if not (self.shared and self.alone and self._flock is not None):
            return
        if not self._flock.try_lock(exclusive=False):  # flock conversion is not atomic; a single opener won
            self.release()
            raise MemoryLockedError(
                f"the image memory at {self.root} was taken in single-process mode while this process repaired it",
                root=self.root,
            )
        self.alone = False

    def _write_owner(self) -> None:
        note = {"pid": os.getpid(), "mode": self.mode}
        try:
            self._owner_path.write_text(json.dumps(note), encoding="utf-8")
        except OSError:
            logger.debug("could not write %s", self._owner_path)

    def release(self) -> None:
        """Give the root back (idempotent)."""
        with _HELD_ROOTS_GUARD:
            if not self._held:
                return
            self._held = False
            self.alone = False
            modes = _HELD_ROOTS.get(self._key, [])
            if self.mode in modes:
                modes.remove(self.mode)
            if not modes:
                _HELD_ROOTS.pop(self._key, None)
            if self._flock is not None:
                self._flock.unlock()
            else:
                self._file_lock.release()  # type: ignore[union-attr]
