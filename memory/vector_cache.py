"""In-process cache of the unit vectors of whole namespaces, so a namespace-filtered search is one exact scan.

Why. A namespace that is a small share of the store (a user's or a conversation's namespace in a shared store)
cannot be answered by over-fetching an unfiltered chroma query, and chroma's metadata filter costs time linear in
the matching records: 36-99 ms at 1000 of 100k records (issue 23). Reading the namespace's vectors back from chroma
for every query is no faster (about 0.06 ms per vector). ``ImageMemory`` therefore keeps, per (collection,
namespace) it has searched, the ids and the L2-normalised vectors of every record in that namespace *and below*
(see ``namespace_index.in_namespace``), filled by one read on the first query, and ranks them with one exact
matrix-vector product: cosine scores exactly, where chroma's HNSW index is approximate.

Exactness. The root lock makes this process the only writer, and every write goes through ``ImageMemory`` under
its write lock, which updates this cache in the same critical section as chroma and the namespace index: an add
appends its rows to every cached namespace that covers the record's namespace, a delete (or a rolled-back add)
drops them, ``repair`` clears everything. Fills run under the same write lock, so no write can fall between reading
a namespace's members and caching their vectors.

Concurrency. Readers take a snapshot (``CachedVectors``) under the internal lock and score it outside it. Rows
``[0, n)`` of an entry's buffer and its first ``n`` ids are never changed in place: appends write past ``n`` (or into
a new, larger buffer) and drops build new arrays, so a snapshot stays valid however the entry changes later.

Memory. Entries are bounded by bytes (``max_bytes``; the vector buffers plus ``ID_BYTES`` per id) and evicted least
recently used first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InvalidMemoryRequestError
from .namespace_index import Which, in_namespace

__all__ = ["DEFAULT_VECTOR_CACHE_BYTES", "CachedVectors", "VectorCache"]

DEFAULT_VECTOR_CACHE_BYTES = 256 * 2**20
"""Default byte budget of ``ImageMemory``'s vector cache: 256 MiB, about 128k cached 512-d vectors."""
ID_BYTES = 80
"""Bytes counted per cached id: a 20-character ``str`` (69 bytes) plus its list slot (8), rounded up."""

Key = tuple[Which, str]


@dataclass(frozen=True)
class CachedVectors:
    """A consistent snapshot of one cached namespace: ``ids[i]`` has the unit vector ``vectors[i]``."""

    ids: Sequence[str]
    vectors: np.ndarray  # (len(ids), dim) float32, rows of norm 1 (or 0 for a zero embedding)

    def scores(self, query: np.ndarray) -> np.ndarray:
        """Cosine similarity of every cached row to the unit vector ``query`` (dim,), float32.

        ``np.einsum`` rather than ``@``: a matrix-vector product goes to a multithreaded BLAS gemv, which on a loaded
        machine waits for its worker threads (8 ms for 1000 x 512 on a busy 2-core VM against 0.1 ms here).
        """
        return np.einsum("ij,j->i", self.vectors, query)


class _Entry:
    """One namespace: ``buffer[:size]`` holds the vectors of ``ids`` (len(ids) == size); rows past size are spare."""

    __slots__ = ("buffer", "ids", "size")

    def __init__(self, ids: list[str], vectors: np.ndarray, spare: int) -> None:
        self.buffer = np.empty((len(ids) + spare, vectors.shape[1]), dtype=np.float32)
        self.buffer[: len(ids)] = vectors
        self.ids = ids
        self.size = len(ids)

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes + ID_BYTES * self.size

    def snapshot(self) -> CachedVectors:
        return CachedVectors(ids=self.ids, vectors=self.buffer[: self.size])

    def append(self, ids: list[str], vectors: np.ndarray) -> None:
        needed = self.size + len(ids)
        if needed > len(self.buffer):  # grow by half: appends stay amortised O(rows added)
            grown = np.empty((max(needed, len(self.buffer) * 3 // 2 + 16), self.buffer.shape[1]), dtype=np.float32)
            grown[: self.size] = self.buffer[: self.size]
            self.buffer = grown  # snapshots keep the old buffer alive as long as they need it
        self.buffer[self.size : needed] = vectors
        self.ids.extend(ids)  # readers only look at their first `size` ids
        self.size = needed

    def drop(self, ids: set[str]) -> bool:
        """Remove the rows of ``ids`` (new arrays, never in place); True when any was here."""
        keep = [row for row, image_id in enumerate(self.ids[: self.size]) if image_id not in ids]
        if len(keep) == self.size:
            return False
        spare = len(self.buffer) - self.size
        kept = self.buffer[keep]  # a copy
        self.buffer = np.empty((len(keep) + spare, self.buffer.shape[1]), dtype=np.float32)
        self.buffer[: len(keep)] = kept
        self.ids = [self.ids[row] for row in keep]
        self.size = len(keep)
        return True


class VectorCache:
    """Unit vectors and ids per (collection, namespace), LRU-bounded by bytes; thread-safe (see module doc).

    ``ImageMemory`` owns one and keeps it exact; ``max_bytes`` (settable; 0 turns the cache off) bounds it.
    """

    def __init__(self, max_bytes: int = DEFAULT_VECTOR_CACHE_BYTES) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._nbytes = 0
        self._max_bytes = _check_max_bytes(max_bytes)

    @property
    def max_bytes(self) -> int:
        """The byte budget; lowering it evicts least recently used namespaces at once."""
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        with self._lock:
            self._max_bytes = _check_max_bytes(value)
            self._evict()

    @property
    def nbytes(self) -> int:
        """Bytes held now (vector buffers, spare rows included, plus ``ID_BYTES`` per id)."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[Key]:
        """The cached (collection, namespace) pairs, least recently used first."""
        with self._lock:
            return list(self._entries)

    def fits(self, rows: int, dim: int) -> bool:
        """Whether a namespace of ``rows`` vectors of ``dim`` floats fits the budget at all."""
        return _spare(rows) * 4 * dim + rows * (4 * dim + ID_BYTES) <= self._max_bytes

    def get(self, which: Which, namespace: str) -> CachedVectors | None:
        """The snapshot of a cached namespace (marking it most recently used), or None."""
        with self._lock:
            entry = self._entries.get((which, namespace))
            if entry is None:
                return None
            self._entries.move_to_end((which, namespace))
            return entry.snapshot()

    def put(self, which: Which, namespace: str, ids: list[str], vectors: np.ndarray) -> CachedVectors | None:
        """Cache every record of ``namespace`` and below: ``vectors`` (n, dim) are unit rows of ``ids``.

        The caller holds the memory's write lock (no write may fall between reading the namespace and this call).
        Returns the snapshot, or None when the namespace alone is over the budget (then nothing is cached).
        """
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)
        entry = _Entry(list(ids), vectors, spare=_spare(len(ids)))
        with self._lock:
            old = self._entries.pop((which, namespace), None)
            if old is not None:
                self._nbytes -= old.nbytes
            if entry.nbytes > self._max_bytes:
                return None
            self._entries[which, namespace] = entry
            self._nbytes += entry.nbytes
            self._evict()
            return entry.snapshot() if (which, namespace) in self._entries else None

    def append(self, which: Which, records: Sequence[tuple[str, str]], vectors: np.ndarray) -> None:
        """New records of the ``which`` collection: (id, namespace) pairs with their unit vectors (n, dim) rows,
        appended to every cached namespace that covers them. Called under the memory's write lock."""
        if not records or not self._entries:
            return
        with self._lock:
            for (entry_which, namespace), entry in list(self._entries.items()):
                if entry_which != which:
                    continue
                rows = [row for row, (_, name) in enumerate(records) if in_namespace(name, namespace)]
                if not rows:
                    continue
                before = entry.nbytes
                entry.append([records[row][0] for row in rows], vectors[rows])
                self._nbytes += entry.nbytes - before
            self._evict()

    def discard(self, records: Iterable[tuple[str, str | None]]) -> None:
        """Forget records, given as (id, namespace) pairs, in both collections; a None namespace (an id the
        namespace index does not know) is looked for in every entry."""
        by_namespace: dict[str | None, set[str]] = {}
        for image_id, namespace in records:
            by_namespace.setdefault(namespace, set()).add(image_id)
        if not by_namespace or not self._entries:
            return
        with self._lock:
            for (_, namespace), entry in self._entries.items():
                dropped = {
                    image_id
                    for record_namespace, ids in by_namespace.items()
                    if record_namespace is None or in_namespace(record_namespace, namespace)
                    for image_id in ids
                }
                if dropped:
                    before = entry.nbytes
                    if entry.drop(dropped):
                        self._nbytes += entry.nbytes - before

    def clear(self) -> None:
        """Forget everything (``repair`` rebuilds the namespace index; the next queries refill)."""
        with self._lock:
            self._entries.clear()
            self._nbytes = 0

    def _evict(self) -> None:
        while self._nbytes > self._max_bytes and self._entries:
            _, entry = self._entries.popitem(last=False)
            self._nbytes -= entry.nbytes


def _spare(rows: int) -> int:
    """Spare rows allocated with a namespace of ``rows`` records, for the adds that follow without a copy."""
    return min(rows // 16 + 16, 4096)


def _check_max_bytes(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidMemoryRequestError(
            f"vector_cache_bytes must be a non-negative int (0 turns the cache off), got {value!r}"
        )
    return value
