"""Several processes on one memory root: file locks, per-process journals, and recovery of dead writers' journals.

Why. A Ray deployment, several LangGraph workers or a CLI next to a server want ONE image memory: the records and
vectors on one chroma server (``ChromaServer``), the image files in one folder every process can reach. The
single-process mode cannot do that: its root lock is exclusive, its one journal is rewritten by its owner, and its
repair on open deletes whatever looks half-written, which in a shared root may be another process's add in flight.

Shared mode (``ImageMemory.open(root, client=ChromaServer(...), shared=True)``) therefore changes four things:

- the root lock is taken *shared* by every process of the mode (``flock(LOCK_SH)``) and still refuses (and is
  refused by) a single-process open;
- writes are serialised across processes by an exclusive ``flock`` on ``root/.write.lock`` taken for the short
  critical sections only (file write + journal + chroma write; a delete's check "is this file still referenced?"),
  so two processes can never interleave a delete's file removal with an add of the same content;
- every process journals to its own ``root/journals/<writer>.jsonl`` and holds ``<writer>.alive`` locked while
  open; a journal whose ``.alive`` lock can be taken belongs to a dead process, and any peer rolls it back (its
  adds were never acknowledged, its deletes are finished) under the write lock, touching nothing else;
- the full sweep (records without files, files without records) runs only while no other process has the root
  open: the first process of a shared root does it before letting others in, and a single-process open always
  does.

Locks are ``flock`` locks: released by the kernel when a process dies (SIGKILL included), shared between the
processes of one host, and on network filesystems only where those honour ``flock`` (NFSv4 with locking, not
every FUSE mount). Windows has no ``flock``: shared mode is refused there with a clear error.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import InvalidMemoryRequestError, MemoryLockedError

try:
    import fcntl
except ImportError:  # Windows: the single-process mode falls back to ``filelock``; shared mode is refused
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "HAS_FLOCK",
    "JOURNALS",
    "FlockFile",
    "PeerJournals",
    "ProcessWriteLock",
    "dead_journals",
    "forget",
    "read_owner",
    "require_flock",
]

HAS_FLOCK = fcntl is not None
DEFAULT_LOCK_TIMEOUT = 60.0
"""Seconds a shared-mode process waits for the write lock (or for the first opener's repair) before giving up."""
_FIRST_POLL_SECONDS, _POLL_SECONDS = 0.0005, 0.01  # flock has no timeout: poll, backing off from 0.5 to 10 ms
JOURNALS = "journals"


def require_flock() -> None:
    """Raise ``InvalidMemoryRequestError`` where ``flock`` is missing (shared mode cannot be safe without it)."""
    if not HAS_FLOCK:
        raise InvalidMemoryRequestError(
            "shared=True needs POSIX flock file locks, which this platform lacks; open the memory in "
            "single-process mode (shared=False) or run the processes on Linux/macOS"
        )


class FlockFile:
    """One ``flock`` on one file through its own descriptor (locks of separate descriptors exclude each other,
    even within one process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds a lock (shared or exclusive)."""
        return self._fd is not None

    def try_lock(self, *, exclusive: bool) -> bool:
        """Take the lock without waiting (or convert the one held); False when another descriptor holds it."""
        assert fcntl is not None
        fd = self._fd if self._fd is not None else os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as error:
            if self._fd is None:
                os.close(fd)
            if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        self._fd = fd
        return True

    def lock(self, *, exclusive: bool, timeout: float, what: str) -> None:
        """Take the lock, polling up to ``timeout`` seconds; ``MemoryLockedError`` naming ``what`` after that."""
        deadline = time.monotonic() + timeout
        pause = _FIRST_POLL_SECONDS
        while not self.try_lock(exclusive=exclusive):
            if time.monotonic() >= deadline:
                raise MemoryLockedError(
                    f"{what} at {self.path} stayed held by another process for {timeout:.0f} s; that process may "
                    "be stuck: stop it, or raise lock_timeout= of ImageMemory.open",
                    root=self.path.parent,
                )
            time.sleep(pause)  # short first: a write section lasts tens of ms, and a late wake-up is lost time
            pause = min(2 * pause, _POLL_SECONDS)

    def still_linked(self) -> bool:
        """True when the path still names the file we locked (another process may have unlinked it meanwhile)."""
        if self._fd is None:
            return False
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return False

    def unlock(self) -> None:
        """Release and close (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor releases the flock


class ProcessWriteLock:
    """Re-entrant write lock of one ``ImageMemory``: a thread lock, plus (shared mode) an exclusive ``flock`` on
    ``root/.write.lock`` held while any thread of this memory is inside a write section."""

    def __init__(self, root: Path | None, *, timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
        self._threads = threading.RLock()
        self._file = FlockFile(root / ".write.lock") if root is not None else None
        self._timeout = timeout
        self._depth = 0

    def __enter__(self) -> ProcessWriteLock:
        self._threads.acquire()
        if self._depth == 0 and self._file is not None:
            try:
                self._file.lock(exclusive=True, timeout=self._timeout, what="the memory's write lock")
            except BaseException:
                self._threads.release()
                raise
        self._depth += 1
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._depth -= 1
        if self._depth == 0 and self._file is not None:
            self._file.unlock()
        self._threads.release()


class PeerJournals:
    """This process's journal in ``root/journals`` and the journals of the other processes of a shared root.

    ``writer`` names this process (host, pid, random); while the memory is open its ``<writer>.alive`` file is
    locked, which is how peers tell a live journal from a dead one.
    """

    def __init__(self, root: Path) -> None:
        self.directory = root / JOURNALS
        self.directory.mkdir(parents=True, exist_ok=True)
        self.writer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._alive = FlockFile(self.directory / f"{self.writer}.alive")
        for _ in range(100):  # a peer's recovery may unlink a fresh .alive before we lock it: lock a new one
            if self._alive.try_lock(exclusive=True) and self._alive.still_linked():
                break
            self._alive.unlock()
        else:  # pragma: no cover - would need a peer unlinking our file 100 times in a row
            raise MemoryLockedError(f"could not register this process in {self.directory}", root=root)

    @property
    def journal_path(self) -> Path:
        """This process's write-ahead journal."""
        return self.directory / f"{self.writer}.jsonl"

    def close(self) -> None:
        """Deregister: drop an empty journal and the liveness file, then release the liveness lock."""
        if not self._alive.held:
            return
        try:
            if not self.journal_path.exists() or self.journal_path.stat().st_size == 0:
                self.journal_path.unlink(missing_ok=True)
                self._alive.path.unlink(missing_ok=True)
        except OSError:
            pass  # a leftover file is recovered (as an empty journal) by the next peer that looks
        self._alive.unlock()


def dead_journals(directory: Path, *, exclude: str | None = None) -> list[tuple[Path, FlockFile]]:
    """The journals in ``directory`` whose writer is gone, each with its ``.alive`` lock now held by the caller
    (pass each to ``forget`` once repaired, or unlock it). Call under the write lock, so that no live writer is
    part-way through a transaction on a journal that is read here."""
    if not directory.is_dir():
        return []
    names = {path.stem for path in directory.glob("*.jsonl")} | {path.stem for path in directory.glob("*.alive")}
    found = []
    for name in sorted(names - {exclude}):
        alive = FlockFile(directory / f"{name}.alive")
        if alive.try_lock(exclusive=True):
            found.append((directory / f"{name}.jsonl", alive))
        # else: that process is alive and owns its journal
    return found


def forget(journal: Path, alive: FlockFile) -> None:
    """Delete a dead writer's journal and liveness file (after its intents were repaired)."""
    journal.unlink(missing_ok=True)
    alive.path.unlink(missing_ok=True)
    alive.unlock()


def read_owner(path: Path) -> dict[str, Any]:
    """The holder note of a root lock (``{"pid": ..., "mode": ...}``), or ``{}`` if absent or unreadable."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return {}
    if text.isdigit():  # written by older versions: a bare pid of a single-process holder
        return {"pid": int(text), "mode": "single"}
    try:
        owner = json.loads(text)
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}
