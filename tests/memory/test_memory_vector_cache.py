"""The vector cache behind namespace-filtered recall (issue 23): exact, kept exact under writes, bounded by bytes.

A namespace of up to ``VECTOR_CACHE_MAX_ROWS`` records is answered from cached unit vectors with one exact scan.
Every comparison here is against an exact brute force over the vectors chroma stores (chroma's own HNSW answer is
approximate), with the namespace semantics of ``in_namespace`` (a namespace covers its sub-namespaces).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from chromadb.api.models.Collection import Collection
from memory_helpers import noise_image
from PIL import Image
from seedx_agent.memory import ImageHit, ImageMemory, InvalidMemoryRequestError
from seedx_agent.memory import store as store_module
from seedx_agent.memory.namespace_index import in_namespace
from seedx_agent.memory.vector_cache import ID_BYTES, VectorCache

WORDS = ["red", "green", "blue", "circle", "square", "star", "small", "large", "left", "right"]
PROJECTION = np.random.default_rng(0).standard_normal((4 * 4 * 3, 16)).astype(np.float32)
# The mid-size store: a 300-record namespace (with a 40-record sub-namespace) among 2000.
MID = {"u/mid": 260, "u/mid/sub": 40, "u/other": 1700}


def small_embedder(images: list[Image.Image]) -> np.ndarray:
    """(n, 16): a fixed random projection of the 4x4 thumbnail, so distinct pictures get distinct vectors."""
    pixels = [np.asarray(image.convert("RGB").resize((4, 4)), dtype=np.float32).ravel() / 255 - 0.5 for image in images]
    return np.stack(pixels) @ PROJECTION


def picture(number: int) -> Image.Image:
    return noise_image(number, size=(4, 4))


def prompt(number: int) -> str:
    return " ".join(WORDS[(number * 7 + i * 3) % len(WORDS)] for i in range(3))


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about recall, not durability: skip the fsyncs that make up half the cost of an add."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def fill(memory: ImageMemory, namespaces: dict[str, int], first: int = 0) -> dict[str, int]:
    """Store picture(n) with prompt(n) for consecutive n from ``first``; returns id -> n."""
    number, numbers_of = first, {}
    for namespace, count in namespaces.items():
        numbers = range(number, number + count)
        records = memory.add_many(
            [picture(n) for n in numbers],
            kind="generated",
            namespace=namespace,
            prompts=[prompt(n) for n in numbers],
            batch_size=500,
            progress=False,
        )
        numbers_of.update((record.id, n) for record, n in zip(records, numbers))
        number += count
    return numbers_of


@pytest.fixture(scope="module")
def mid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageMemory]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fsync", lambda fd: None)
        memory = ImageMemory.open(tmp_path_factory.mktemp("cache") / "memory", image_embedder=small_embedder)
        fill(memory, MID)
    yield memory
    memory.close()


def stored(memory: ImageMemory, which: str) -> tuple[list[str], list[str], np.ndarray]:
    """Every (id, namespace, embedding) chroma holds in the visual or text collection."""
    collection = memory._visual if which == "image" else memory._text
    found = collection.get(include=["embeddings", "metadatas"])
    namespaces = [metadata["namespace"] for metadata in found["metadatas"]]
    return found["ids"], namespaces, np.asarray(found["embeddings"], dtype=np.float64)


def brute_force(
    memory: ImageMemory | tuple[list[str], list[str], np.ndarray],
    which: str,
    query: np.ndarray,
    namespace: str,
    k: int,
    floor: float,
    exclude: str | None,
) -> list[tuple[str, float]]:
    """The exact top ``k`` over everything stored (``memory``, or what ``stored`` read from it)."""
    ids, namespaces, vectors = stored(memory, which) if isinstance(memory, ImageMemory) else memory
    query = np.asarray(query, dtype=np.float64).ravel()
    scores = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    ranked = sorted(
        (
            (float(score), image_id)
            for image_id, record_namespace, score in zip(ids, namespaces, scores)
            if in_namespace(record_namespace, namespace) and image_id != exclude and score >= floor
        ),
        reverse=True,
    )
    return [(image_id, score) for score, image_id in ranked[:k]]


def assert_exact(got: list[ImageHit], expected: list[tuple[str, float]], context: object) -> None:
    """Same scores in the same order; the same ids wherever a score is not tied with the k-th (equal prompts tie,
    and a tie at the cut may be broken either way)."""
    assert [hit.score for hit in got] == pytest.approx([score for _, score in expected], abs=1e-5), context
    if expected:
        cut = expected[-1][1] + 1e-5
        assert {hit.record.id for hit in got if hit.score > cut} == {i for i, s in expected if s > cut}, context


def check(memory: ImageMemory, namespace: str, *, k: int = 8, floor: float = -1.0, number: int = 10**6) -> None:
    """search_image (a new picture and a stored id) and search_text in ``namespace`` equal the brute force."""
    some = memory.find(namespace=namespace, limit=1)
    image_queries: list[tuple[object, np.ndarray, str | None]] = [
        (picture(number), small_embedder([picture(number)])[0], None)
    ]
    if some:
        (vector,) = stored_vector(memory, some[0].id)
        image_queries.append((some[0].id, vector, some[0].id))
    everything = {which: stored(memory, which) for which in ("image", "text")}
    for argument, vector, exclude in image_queries:
        hits = memory.search_image(argument, k=k, namespace=namespace, min_score=floor)
        assert all(in_namespace(hit.record.namespace, namespace) for hit in hits)
        expected = brute_force(everything["image"], "image", vector, namespace, k, floor, exclude)
        assert_exact(hits, expected, (namespace, argument))
    for text in ("red circle", "large star small", prompt(number)):
        hits = memory.search_text(text, k=k, namespace=namespace, min_score=max(floor, 0.1))
        vector = np.asarray(memory.text_embedder.embed_query(text))
        expected = brute_force(everything["text"], "text", vector, namespace, k, max(floor, 0.1), None)
        assert_exact(hits, expected, (namespace, text))


def stored_vector(memory: ImageMemory, image_id: str) -> np.ndarray:
    return np.asarray(memory._visual.get(ids=[image_id], include=["embeddings"])["embeddings"])


class Spy:
    """Records chroma reads of stored vectors (``get`` with embeddings of more than one id: a search by id reads
    its own query vector) and every ``query``'s filter, so a test can tell the cache answered."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.vector_reads: list[int] = []
        self.queries: list[object] = []
        get, query = Collection.get, Collection.query

        def spying_get(collection: Collection, *args: object, **kwargs: object) -> object:
            ids = kwargs.get("ids")
            if "embeddings" in (kwargs.get("include") or []) and ids is not None and len(ids) > 1:  # type: ignore[arg-type]
                self.vector_reads.append(len(ids))  # type: ignore[arg-type]
            return get(collection, *args, **kwargs)

        def spying_query(collection: Collection, *args: object, **kwargs: object) -> object:
            self.queries.append(kwargs.get("where"))
            return query(collection, *args, **kwargs)

        monkeypatch.setattr(Collection, "get", spying_get)
        monkeypatch.setattr(Collection, "query", spying_query)


def test_a_mid_size_namespace_is_ranked_exactly_from_the_cache(
    mid: ImageMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    for namespace in ("u/mid", "u/mid/sub", "u/other", "u"):
        for k, floor in ((1, -1.0), (8, 0.4)):
            check(mid, namespace, k=k, floor=floor, number=10**6 + k)
    assert spy.queries == []  # neither chroma's filter nor an over-fetched query: the cache answered every search
    assert {("visual", "u/mid"), ("text", "u/mid"), ("visual", "u/mid/sub"), ("visual", "u")} <= set(
        mid.vector_cache.keys()
    )
    mid.namespace_fast_path = False  # the switch back to chroma's metadata filter
    try:
        assert len(mid.search_image(picture(5), k=3, namespace="u/mid")) == 3
    finally:
        mid.namespace_fast_path = True
    assert spy.queries == [{"ns_1": "u/mid"}]


def test_a_second_query_reads_no_vectors_from_chroma(mid: ImageMemory, monkeypatch: pytest.MonkeyPatch) -> None:
    mid.vector_cache.clear()
    spy = Spy(monkeypatch)
    mid.search_text("red circle", namespace="u/mid")
    mid.search_image(picture(7), namespace="u/mid")
    assert sorted(spy.vector_reads) == [300, 300]  # one read per collection: the text and the visual vectors
    some_id = mid.find(namespace="u/mid", limit=1)[0].id
    for number in range(5):
        mid.search_text(prompt(number), namespace="u/mid")
        mid.search_image(picture(number), namespace="u/mid")
        mid.search_image(some_id, namespace="u/mid")
    assert sorted(spy.vector_reads) == [300, 300] and spy.queries == []
    # The memory cost: 300 rows plus 300 // 16 + 16 spare rows per collection (16-d images, 256-d texts).
    text_dim = len(mid.text_embedder.embed_query("red"))
    assert mid.vector_cache.nbytes == 334 * 4 * (16 + text_dim) + 2 * 300 * ID_BYTES


def test_the_cache_stays_exact_under_adds_and_deletes(memory_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ImageMemory.open(memory_root, image_embedder=small_embedder) as memory:
        numbers_of = fill(memory, {"n": 60, "n/sub": 20, "other": 60})
        number = max(numbers_of.values()) + 1
        scopes = ("n", "n/sub", "other")
        for namespace in scopes:
            check(memory, namespace)
        spy = Spy(monkeypatch)  # from here on the cache must be updated in place, never re-read
        added = memory.add(picture(number), kind="input", namespace="n", prompt="zebra")
        found = memory.search_image(picture(number), k=1, namespace="n")
        assert [(hit.record.id, round(hit.score, 5)) for hit in found] == [(added.id, 1.0)]
        assert [hit.record.id for hit in memory.search_text("zebra", k=1, namespace="n")] == [added.id]
        assert added.id not in [hit.record.id for hit in memory.search_text("zebra", namespace="n/sub")]
        below = memory.add_many(
            [picture(n) for n in range(number + 1, number + 6)],
            kind="input",
            namespace="n/sub/deeper",
            prompts=["yak"] * 5,
            progress=False,
        )
        for namespace in ("n", "n/sub"):  # a namespace covers its sub-namespaces
            hits = memory.search_text("yak", k=5, namespace=namespace)
            assert {hit.record.id for hit in hits} == {record.id for record in below}
        assert memory.search_text("yak", namespace="other") == []
        elsewhere = memory.add(picture(number + 6), kind="input", namespace="other/x", prompt="zebra yak")
        assert [hit.record.id for hit in memory.search_text("zebra", k=1, namespace="n")] == [added.id]
        assert [hit.record.id for hit in memory.search_image(picture(number + 6), k=1, namespace="other")] == [
            elsewhere.id
        ]
        numbers_of.update({added.id: number, elsewhere.id: number + 6})
        numbers_of.update((record.id, n) for record, n in zip(below, range(number + 1, number + 6)))
        for namespace in scopes:
            check(memory, namespace, number=number + 100)
        # Deletes in the namespace, in a sub-namespace, and in an unrelated one.
        for victim in (added, below[0], elsewhere, memory.find(namespace="n", limit=1)[0]):
            memory.delete(victim.id)
            for namespace in scopes:
                hits = memory.search_image(picture(numbers_of[victim.id]), k=3, namespace=namespace)
                assert victim.id not in [hit.record.id for hit in hits]
        for namespace in scopes:
            check(memory, namespace, number=number + 200)
        # A failed add_many rolls back the batch it already wrote, in the cache too.
        with pytest.raises(InvalidMemoryRequestError):
            memory.add_many(
                [picture(number + 300), picture(number + 301), "img_0000000000000000"],
                kind="input",
                namespace="n/sub",
                prompts=["gnu"] * 3,
                batch_size=2,
                progress=False,
            )
        assert max((hit.score for hit in memory.search_text("gnu", namespace="n", min_score=-1)), default=0) < 0.99
        for namespace in scopes:
            check(memory, namespace, number=number + 300)
        assert spy.vector_reads == [] and spy.queries == []
        assert {("visual", "n"), ("visual", "n/sub"), ("visual", "other"), ("text", "n")} <= set(
            memory.vector_cache.keys()
        )
        memory.repair()  # rebuilds the namespace index: the cache starts over
        assert len(memory.vector_cache) == 0 and memory.vector_cache.nbytes == 0
        check(memory, "n", number=number + 400)
        assert spy.vector_reads  # refilled from chroma


def test_the_byte_budget_evicts_least_recently_used_namespaces(memory_root: Path) -> None:
    entry = 60 * (16 * 4 + ID_BYTES) + (60 // 16 + 16) * 16 * 4  # 60 rows plus the spare rows, one collection
    with ImageMemory.open(memory_root, image_embedder=small_embedder, vector_cache_bytes=int(2.5 * entry)) as memory:
        fill(memory, {"s/p": 60, "s/q": 60, "s/r": 60})
        cache = memory.vector_cache
        query = small_embedder([picture(900)])[0]
        for namespace in ("s/p", "s/q", "s/r", "s/q", "s/p"):
            hits = memory.search_image(picture(900), k=5, namespace=namespace)
            assert_exact(hits, brute_force(memory, "image", query, namespace, 5, -1, None), namespace)
            assert cache.nbytes <= cache.max_bytes
        assert cache.keys() == [("visual", "s/q"), ("visual", "s/p")]  # s/r was the least recently used
        memory.add(picture(901), kind="input", namespace="s/p")  # into a spare row of s/p: nothing evicted
        assert cache.keys() == [("visual", "s/q"), ("visual", "s/p")] and cache.nbytes <= cache.max_bytes
        assert [hit.record.namespace for hit in memory.search_image(picture(901), k=1, namespace="s")] == ["s/p"]
        assert ("visual", "s") not in cache.keys()  # 181 records: over the whole budget, answered without the cache
        cache.max_bytes = entry + 200  # lowering the budget evicts at once
        assert cache.keys() == [("visual", "s/p")] and cache.nbytes <= cache.max_bytes
        check(memory, "s/p", number=903)
        cache.max_bytes = 0  # off: the namespace index's other paths answer, nothing is cached
        assert len(cache) == 0
        check(memory, "s/q", number=904)
        assert len(cache) == 0
    with pytest.raises(InvalidMemoryRequestError, match="vector_cache_bytes"):
        ImageMemory.open(memory_root, image_embedder=small_embedder, vector_cache_bytes=-1)


def test_a_namespace_over_the_row_cap_is_not_cached(mid: ImageMemory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "VECTOR_CACHE_MAX_ROWS", 299)
    mid.vector_cache.clear()
    hits = mid.search_image(picture(42), k=5, namespace="u/mid")  # 300 records: answered by the other paths
    assert len(hits) == 5 and all(in_namespace(hit.record.namespace, "u/mid") for hit in hits)
    assert mid.vector_cache.keys() == []
    check(mid, "u/mid/sub", number=43)
    assert ("visual", "u/mid/sub") in mid.vector_cache.keys()


def test_snapshots_survive_later_writes() -> None:
    """What a concurrent reader holds is never changed in place by appends, drops or growth."""
    cache = VectorCache(max_bytes=10**6)
    rng = np.random.default_rng(3)
    cache.put("visual", "a", [f"id{i}" for i in range(5)], rng.standard_normal((5, 4)).astype(np.float32))
    snapshot = cache.get("visual", "a")
    assert snapshot is not None
    before_ids, before_vectors = list(snapshot.ids[:5]), snapshot.vectors.copy()
    cache.append("visual", [(f"new{i}", "a/b") for i in range(40)], rng.standard_normal((40, 4)).astype(np.float32))
    cache.append("visual", [("elsewhere", "ab")], rng.standard_normal((1, 4)).astype(np.float32))  # not below "a"
    cache.discard([("id0", "a"), ("id3", "a"), ("new5", "a/b")])
    assert list(snapshot.ids[:5]) == before_ids and np.array_equal(snapshot.vectors, before_vectors)
    now = cache.get("visual", "a")
    assert now is not None and len(now.ids) == len(now.vectors) == 5 + 40 - 3
    assert "elsewhere" not in now.ids and "id0" not in now.ids and "new39" in now.ids
