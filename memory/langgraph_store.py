"""``ImageMemoryStore``: LangGraph's ``BaseStore`` over an ``ImageMemory`` root, for graphs' long-term memory.

Items (JSON dicts under tuple namespaces) live in a sqlite file in the memory root
(``langgraph_store.sqlite``), so they share the root's lock and lifetime; ``search(query=...)`` embeds the
indexed fields with the memory's text embedder and ranks by cosine similarity (brute force in numpy: meant
for thousands of items, not millions). Graph code reaches the images themselves through ``.memory``.

Behaviour follows ``InMemoryStore`` (the reference implementation of the contract): ``put`` with
``value=None`` deletes, ``index=False`` skips embedding, ``index=[paths]`` overrides the fields, filters
compare nested values with ``$eq/$ne/$gt/$gte/$lt/$lte``, items are listed in first-insertion order, query
results by descending score with unembedded items appended. Deliberate differences: an update keeps the
item's ``created_at`` (as the sqlite/postgres stores do); ``list_namespaces`` lists only namespaces that hold
items; values must be JSON-serialisable; operations in one batch run in order; TTLs are not supported.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    get_text_at_path,
    tokenize_path,
    validate_op_namespace,
)

from .embedders import check_embeddings, unit_rows
from .errors import EmbeddingMismatchError, InvalidMemoryRequestError, MemoryClosedError

if TYPE_CHECKING:
    from .store import ImageMemory

__all__ = ["ImageMemoryStore"]

_SEPARATOR = "."  # LangGraph forbids '.' inside namespace labels, so joining on it is unambiguous
_NUMERIC_OPERATORS = {
    "$gt": lambda left, right: left > right,
    "$gte": lambda left, right: left >= right,
    "$lt": lambda left, right: left < right,
    "$lte": lambda left, right: left <= right,
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (namespace, key)
);
CREATE TABLE IF NOT EXISTS vectors (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    path TEXT NOT NULL,
    embedding BLOB NOT NULL,
    PRIMARY KEY (namespace, key, path)
);
"""


class ImageMemoryStore(BaseStore):
    """LangGraph long-term store kept in an ``ImageMemory`` root (see module docstring for the semantics).

    ``index_fields`` are JSON paths of the values to embed for ``search(query=...)`` (LangGraph path syntax,
    e.g. ``["text", "tags[*]"]``); the default ``["$"]`` embeds the whole value.
    """

    supports_ttl = False

    def __init__(self, memory: ImageMemory, *, index_fields: list[str] | None = None) -> None:
        memory._check_open()
        self.memory = memory
        self.index_fields = list(index_fields) if index_fields else ["$"]
        self._default_paths = [(path, _tokenize(path)) for path in self.index_fields]
        self._guard = threading.Lock()
        self._connection: sqlite3.Connection | None = sqlite3.connect(
            memory.root / "langgraph_store.sqlite", check_same_thread=False, isolation_level=None
        )
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=FULL")
        self._connection.executescript(_SCHEMA)
        memory.on_close(self.close)

    def close(self) -> None:
        """Close the sqlite connection (also done when the memory closes); idempotent."""
        with self._guard:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise MemoryClosedError(
                f"the LangGraph store of the image memory at {self.memory.root} is closed; reopen the memory"
            )
        return self._connection

    # ------------------------------------------------------------------ BaseStore API

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run the operations in order and return one result per operation (``None`` for puts)."""
        ops = list(ops)
        for op in ops:
            if not isinstance(op, (GetOp, SearchOp, PutOp, ListNamespacesOp)):
                raise InvalidMemoryRequestError(f"unknown store operation {type(op).__name__}: {op!r}")
            validate_op_namespace(op)
            if isinstance(op, PutOp):
                if not op.namespace:
                    raise InvalidNamespaceError("Namespace cannot be empty.")
                if op.ttl is not None:
                    raise InvalidMemoryRequestError("ImageMemoryStore does not support TTLs; pass ttl=None")
        put_vectors = self._embed_puts([op for op in ops if isinstance(op, PutOp)])
        query_vectors = self._embed_queries({op.query for op in ops if isinstance(op, SearchOp) and op.query})
        results: list[Result] = []
        with self._guard:
            connection = self._db()
            connection.execute("BEGIN IMMEDIATE")
            try:
                for op in ops:
                    if isinstance(op, GetOp):
                        results.append(self._get(connection, op))
                    elif isinstance(op, SearchOp):
                        results.append(self._search(connection, op, query_vectors.get(op.query or "")))
                    elif isinstance(op, ListNamespacesOp):
                        results.append(self._list_namespaces(connection, op))
                    else:
                        self._put(connection, op, put_vectors.get(id(op), []))
                        results.append(None)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Async ``batch``: runs the (blocking sqlite + embedder) work in a worker thread."""
        return await asyncio.to_thread(self.batch, list(ops))

    # ------------------------------------------------------------------ embedding

    def _embed_puts(self, puts: list[PutOp]) -> dict[int, list[tuple[str, np.ndarray]]]:
        """(path, vector) pairs per put op (keyed by ``id(op)``), embedded in one embedder call."""
        wanted: list[tuple[int, str, str]] = []  # (op id, field path, text)
        for op in puts:
            if op.value is None or op.index is False:
                continue
            paths = self._default_paths if op.index is None else [(path, _tokenize(path)) for path in op.index]
            for path, tokens in paths:
                texts = get_text_at_path(op.value, tokens)
                if len(texts) == 1:
                    wanted.append((id(op), path, texts[0]))
                else:
                    wanted.extend((id(op), f"{path}.{index}", text) for index, text in enumerate(texts))
        if not wanted:
            return {}
        vectors = check_embeddings(
            self.memory.text_embedder.embed_documents([text for _, _, text in wanted]),
            count=len(wanted),
            what="text embedder",
        )
        by_op: dict[int, list[tuple[str, np.ndarray]]] = {}
        for (op_id, path, _), vector in zip(wanted, vectors):
            by_op.setdefault(op_id, []).append((path, vector))
        return by_op

    def _embed_queries(self, queries: set[str]) -> dict[str, np.ndarray]:
        embedder = self.memory.text_embedder
        return {
            query: check_embeddings([embedder.embed_query(query)], count=1, what="text embedder")[0]
            for query in queries
        }

    # ------------------------------------------------------------------ operations

    @staticmethod
    def _item(row: tuple) -> Item:
        namespace, key, value, created_at, updated_at = row
        return Item(
            namespace=_decode_namespace(namespace),
            key=key,
            value=json.loads(value),
            created_at=datetime.fromisoformat(created_at),
            updated_at=datetime.fromisoformat(updated_at),
        )

    def _get(self, connection: sqlite3.Connection, op: GetOp) -> Item | None:
        row = connection.execute(
            "SELECT namespace, key, value, created_at, updated_at FROM items WHERE namespace = ? AND key = ?",
            (_encode_namespace(op.namespace), op.key),
        ).fetchone()
        return None if row is None else self._item(row)

    def _put(self, connection: sqlite3.Connection, op: PutOp, vectors: list[tuple[str, np.ndarray]]) -> None:
        namespace = _encode_namespace(op.namespace)
        connection.execute("DELETE FROM vectors WHERE namespace = ? AND key = ?", (namespace, op.key))
        if op.value is None:
            connection.execute("DELETE FROM items WHERE namespace = ? AND key = ?", (namespace, op.key))
            return
        try:
            value = json.dumps(dict(op.value), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise InvalidMemoryRequestError(
                f"value for key {op.key!r} in {op.namespace} is not JSON-serialisable ({error}); store ids, "
                "text and numbers (e.g. an image id from ImageMemory) instead of objects"
            ) from error
        now = datetime.now(timezone.utc).isoformat()
        connection.execute(
            "INSERT INTO items (namespace, key, value, created_at, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (namespace, op.key, value, now, now),
        )
        connection.executemany(
            "INSERT INTO vectors (namespace, key, path, embedding) VALUES (?, ?, ?, ?)",
            [(namespace, op.key, path, vector.astype(np.float32).tobytes()) for path, vector in vectors],
        )

    def _search(
        self, connection: sqlite3.Connection, op: SearchOp, query_vector: np.ndarray | None
    ) -> list[SearchItem]:
        if op.limit < 0 or op.offset < 0:
            raise InvalidMemoryRequestError(f"limit and offset must be >= 0, got limit={op.limit} offset={op.offset}")
        condition, parameters = _prefix_condition(op.namespace_prefix)
        rows = connection.execute(
            f"SELECT namespace, key, value, created_at, updated_at FROM items {condition} ORDER BY seq", parameters
        ).fetchall()
        candidates = [self._item(row) for row in rows]
        if op.filter:
            candidates = [item for item in candidates if _matches_filter(item.value, op.filter)]
        if query_vector is None:
            return [_search_item(item, None) for item in candidates[op.offset : op.offset + op.limit]]

        scores = self._scores(connection, op.namespace_prefix, query_vector)
        scored = sorted(
            (item for item in candidates if (item.namespace, item.key) in scores),
            key=lambda item: -scores[(item.namespace, item.key)],
        )  # sorted() is stable: ties keep insertion order
        kept = [_search_item(item, scores[(item.namespace, item.key)]) for item in scored][
            op.offset : op.offset + op.limit
        ]
        unscored = [item for item in candidates if (item.namespace, item.key) not in scores]
        kept.extend(_search_item(item, None) for item in unscored[: max(0, op.limit - len(kept))])
        return kept

    def _scores(
        self, connection: sqlite3.Connection, prefix: tuple[str, ...], query_vector: np.ndarray
    ) -> dict[tuple[tuple[str, ...], str], float]:
        """Max cosine similarity over each item's embedded fields, for items under ``prefix``."""
        condition, parameters = _prefix_condition(prefix)
        rows = connection.execute(f"SELECT namespace, key, embedding FROM vectors {condition}", parameters).fetchall()
        if not rows:
            return {}
        vectors = [np.frombuffer(blob, dtype=np.float32) for _, _, blob in rows]
        if any(vector.shape != query_vector.shape for vector in vectors):
            raise EmbeddingMismatchError(
                f"stored item vectors and the text embedder's {query_vector.shape[0]}-d query differ in dimension; "
                "the embedder changed since the items were written: re-put the items or use the old embedder"
            )
        similarities = unit_rows(np.stack(vectors)) @ unit_rows(query_vector[None, :])[0]  # (num_vectors,)
        best: dict[tuple[tuple[str, ...], str], float] = {}
        for (namespace, key, _), similarity in zip(rows, similarities.tolist()):
            item_key = (_decode_namespace(namespace), key)
            best[item_key] = max(similarity, best.get(item_key, -np.inf))
        return best

    def _list_namespaces(self, connection: sqlite3.Connection, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        namespaces = [_decode_namespace(row[0]) for row in connection.execute("SELECT DISTINCT namespace FROM items")]
        for match in op.match_conditions or ():
            namespaces = [namespace for namespace in namespaces if _namespace_matches(match, namespace)]
        if op.max_depth is not None:
            namespaces = list({namespace[: op.max_depth] for namespace in namespaces})
        return sorted(namespaces)[op.offset : op.offset + op.limit]


# ---------------------------------------------------------------------- helpers


def _tokenize(path: str) -> str | list[str]:
    return path if path == "$" else tokenize_path(path)


def _encode_namespace(namespace: tuple[str, ...]) -> str:
    return _SEPARATOR.join(namespace)


def _decode_namespace(encoded: str) -> tuple[str, ...]:
    return tuple(encoded.split(_SEPARATOR)) if encoded else ()


def _prefix_condition(prefix: tuple[str, ...]) -> tuple[str, tuple[Any, ...]]:
    """SQL matching whole-label namespace prefixes (``('a',)`` matches ``a`` and ``a.b``, not ``ab``)."""
    if not prefix:
        return "", ()
    encoded = _encode_namespace(prefix)
    return (
        "WHERE namespace = ? OR substr(namespace, 1, ?) = ?",
        (encoded, len(encoded) + 1, encoded + _SEPARATOR),
    )


def _search_item(item: Item, score: float | None) -> SearchItem:
    return SearchItem(
        namespace=item.namespace,
        key=item.key,
        value=item.value,
        created_at=item.created_at,
        updated_at=item.updated_at,
        score=score,
    )


def _namespace_matches(match: MatchCondition, namespace: tuple[str, ...]) -> bool:
    """Prefix/suffix match where a ``"*"`` label matches any one label."""
    path = tuple(match.path)
    if len(namespace) < len(path):
        return False
    if match.match_type == "prefix":
        window = namespace[: len(path)]
    elif match.match_type == "suffix":
        window = namespace[len(namespace) - len(path) :]
    else:
        raise InvalidMemoryRequestError(f"match_type must be 'prefix' or 'suffix', got {match.match_type!r}")
    return all(pattern == "*" or pattern == label for pattern, label in zip(path, window))


def _matches_filter(value: dict[str, Any], item_filter: dict[str, Any]) -> bool:
    """Whether an item value satisfies a LangGraph filter (each key compared like JSONB containment)."""
    return all(_matches(value.get(key), condition) for key, condition in item_filter.items())


def _matches(actual: Any, condition: Any) -> bool:
    if isinstance(condition, dict):
        if any(key.startswith("$") for key in condition):
            return all(_apply_operator(actual, operator, operand) for operator, operand in condition.items())
        return isinstance(actual, dict) and all(_matches(actual.get(key), sub) for key, sub in condition.items())
    if isinstance(condition, (list, tuple)):
        return (
            isinstance(actual, (list, tuple))
            and len(actual) == len(condition)
            and all(_matches(left, right) for left, right in zip(actual, condition))
        )
    return actual == condition


def _apply_operator(actual: Any, operator: str, operand: Any) -> bool:
    if operator == "$eq":
        return actual == operand
    if operator == "$ne":
        return actual != operand
    if operator in _NUMERIC_OPERATORS:
        try:
            return _NUMERIC_OPERATORS[operator](float(actual), float(operand))
        except (TypeError, ValueError):
            return False  # a missing or non-numeric field never satisfies an ordering
    raise InvalidMemoryRequestError(
        f"unsupported filter operator {operator!r}; use one of $eq, $ne, $gt, $gte, $lt, $lte"
    )
