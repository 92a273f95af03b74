"""In-process index of which namespace every record lies in, so namespace-filtered recall can skip chroma's filter.

Why. A chroma query with ``where={"ns_1": ...}`` first evaluates the filter over the metadata store, which costs
time linear in the number of matching records whatever ``k`` is: 59-65 ms at 100k images in one namespace against
1.8-3.1 ms unfiltered (issue 23). ``ImageMemory`` instead scores a namespace of up to 20k records exactly against
its cached unit vectors (``vector_cache``, filled from the ids this index lists), over-fetches an unfiltered query
(ids and distances only) for a larger namespace that is a large share of the store and keeps the hits whose
namespace this index names, and falls back to chroma's filter when neither applies (see ``ImageMemory._search``).

The index is rebuilt by ``ImageMemory.repair`` on every open (from the full metadata scan repair does anyway) and
kept in step by every write under the memory's write lock. The root lock makes this process the only writer, so
the index cannot miss a record another process added.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Literal

__all__ = ["NamespaceIndex", "in_namespace"]

Which = Literal["visual", "text"]


def in_namespace(record_namespace: str, namespace: str) -> bool:
    """True when ``record_namespace`` is ``namespace`` or lies below it (``namespace + "/..."``)."""
    return record_namespace == namespace or record_namespace.startswith(namespace + "/")


class NamespaceIndex:
    """Id -> namespace of every visual record, and the ids per exact namespace of both collections.

    The text collection holds a subset of the visual ids (records with a prompt or caption), so one id -> namespace
    map serves both. Reads of single ids are lock-free (dict lookups are atomic); anything that iterates takes the
    internal lock, so searches in other threads never see a set change size under them.
    """

    VISUAL: Which = "visual"
    TEXT: Which = "text"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._namespace_of: dict[str, str] = {}
        self._members: dict[str, dict[str, set[str]]] = {self.VISUAL: {}, self.TEXT: {}}
        self._sizes: dict[str, int] = {self.VISUAL: 0, self.TEXT: 0}

    def rebuild(self, namespaces: dict[str, str], text_ids: Iterable[str]) -> None:
        """Replace the contents: ``namespaces`` maps every visual id to its namespace; ``text_ids`` lists the
        ids that also have a text-index entry."""
        with self._lock:
            self._namespace_of = {}
            self._members = {self.VISUAL: {}, self.TEXT: {}}
            self._sizes = {self.VISUAL: 0, self.TEXT: 0}
            self._insert(self.VISUAL, namespaces.items())
            self._insert(self.TEXT, ((i, namespaces[i]) for i in text_ids if i in namespaces))

    def add(self, which: Which, records: Iterable[object]) -> None:
        """Index ``records`` (anything with ``.id`` and ``.namespace``) as entries of the ``which`` collection."""
        with self._lock:
            self._insert(which, ((record.id, record.namespace) for record in records))  # type: ignore[attr-defined]

    def _insert(self, which: Which, pairs: Iterable[tuple[str, str]]) -> None:
        members = self._members[which]
        for image_id, namespace in pairs:
            namespace = self._namespace_of.setdefault(image_id, namespace)  # one str object per record
            ids = members.setdefault(namespace, set())
            if image_id not in ids:
                ids.add(image_id)
                self._sizes[which] += 1

    def discard(self, ids: Iterable[str]) -> None:
        """Forget ``ids`` in both collections (unknown ids are ignored)."""
        with self._lock:
            for image_id in ids:
                namespace = self._namespace_of.pop(image_id, None)
                if namespace is None:
                    continue
                for which, members in self._members.items():
                    bucket = members.get(namespace)
                    if bucket is not None and image_id in bucket:
                        bucket.remove(image_id)
                        self._sizes[which] -= 1
                        if not bucket:
                            del members[namespace]

    def namespace_of(self, image_id: str) -> str | None:
        """The namespace of a stored record, or None for an id this index does not hold."""
        return self._namespace_of.get(image_id)

    def size(self, which: Which) -> int:
        """Number of entries of the ``which`` collection."""
        return self._sizes[which]

    def count(self, which: Which, namespace: str) -> int:
        """Entries of ``which`` in ``namespace`` and below (linear in the number of distinct namespaces)."""
        with self._lock:
            return sum(len(ids) for name, ids in self._members[which].items() if in_namespace(name, namespace))

    def members(self, which: Which, namespace: str) -> list[str]:
        """The ids of ``which`` in ``namespace`` and below."""
        with self._lock:
            return [i for name, ids in self._members[which].items() if in_namespace(name, namespace) for i in ids]
