"""Namespace-filtered recall without chroma's metadata filter, and the relevance floor (issue 23, item 6).

Every path of ``ImageMemory._search`` (empty namespace, the vector cache, exact scan of a tiny namespace,
unfiltered over-fetch, fallback to chroma's filter) must give the hits chroma's own filter gives; the floor drops
hits that share nothing with the query, such as ``../../etc/passwd`` against stored captions.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from chromadb.api.models.Collection import Collection
from memory_helpers import noise_image, solid_image, tiny_image_embedder
from seedx_agent.memory import (
    DEFAULT_MIN_IMAGE_SCORE,
    DEFAULT_MIN_TEXT_SCORE,
    ImageHit,
    ImageMemory,
    InvalidMemoryRequestError,
)
from seedx_agent.memory import store as store_module

WORDS = ["red", "green", "blue", "circle", "square", "star", "small", "large"]
NAMESPACES = {"a/x": 40, "a/y": 12, "a/y/deep": 3, "b": 6}  # namespace -> records


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageMemory]:
    root = tmp_path_factory.mktemp("recall") / "memory"
    with ImageMemory.open(root, image_embedder=tiny_image_embedder) as memory:
        number = 0
        for namespace, count in NAMESPACES.items():
            numbers = range(number, number + count)
            memory.add_many(
                [noise_image(n, size=(12, 8)) for n in numbers],
                kind="generated",
                namespace=namespace,
                prompts=[" ".join(WORDS[(n * 3 + i) % len(WORDS)] for i in range(3)) for n in numbers],
                progress=False,
            )
            number += count
        yield memory


def signature(hits: list[ImageHit]) -> list[tuple[str, float]]:
    return [(hit.record.id, round(hit.score, 4)) for hit in hits]


def assert_same_hits(got: list[ImageHit], expected: list[ImageHit], context: object) -> None:
    """Same scores in the same order, and the same ids wherever the score is not tied with the last one
    (records with equal prompts tie, and two paths may cut a tie at k differently)."""
    assert [hit.score for hit in got] == pytest.approx([hit.score for hit in expected], abs=1e-4), context
    if expected:
        cut = expected[-1].score + 1e-4
        above = {hit.record.id for hit in expected if hit.score > cut}
        assert {hit.record.id for hit in got if hit.score > cut} == above, context


def reference(memory: ImageMemory, search: str, *args: object, **kwargs: object) -> list[ImageHit]:
    memory.namespace_fast_path = False
    try:
        return getattr(memory, search)(*args, **kwargs)
    finally:
        memory.namespace_fast_path = True


PATHS = {  # module constants that force each path of ImageMemory._search_namespace
    "vector cache": {},
    "exact scan": {"VECTOR_CACHE_MAX_ROWS": 0, "EXACT_SCAN_MAX": 10_000},
    "over-fetch": {"VECTOR_CACHE_MAX_ROWS": 0, "EXACT_SCAN_MAX": 0, "OVERFETCH_MAX": 10_000},
    "chroma fallback": {"VECTOR_CACHE_MAX_ROWS": 0, "EXACT_SCAN_MAX": 0, "OVERFETCH_MAX": 0},
}


@pytest.mark.parametrize("path", list(PATHS))
def test_every_namespace_path_gives_chromas_filtered_hits(
    filled: ImageMemory, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in PATHS[path].items():
        monkeypatch.setattr(store_module, name, value)
    wheres: list[object] = []
    original_query = Collection.query

    def spying_query(self: Collection, *args: object, **kwargs: object) -> object:
        wheres.append(kwargs.get("where"))
        return original_query(self, *args, **kwargs)

    monkeypatch.setattr(Collection, "query", spying_query)
    some_id = filled.find(namespace="a/y", limit=1)[0].id
    compared = 0
    for namespace, k, floor in itertools.product(
        ["a", "a/x", "a/y", "a/y/deep", "b", "c", "a/x/none"], [1, 5], [-1, 0.3]
    ):
        for search, argument in (
            ("search_text", "red circle"),
            ("search_text", "large star small"),
            ("search_image", some_id),
            ("search_image", solid_image((200, 40, 40))),
        ):
            kwargs = {"k": k, "namespace": namespace, "min_score": floor}
            wheres.clear()
            fast = getattr(filled, search)(argument, **kwargs)
            used_filter = any(where is not None for where in wheres)
            expected = reference(filled, search, argument, **kwargs)
            assert_same_hits(fast, expected, (search, argument, kwargs))
            assert all(hit.record.namespace.startswith(namespace) for hit in fast)
            assert all(hit.score >= floor for hit in fast)
            if argument == some_id:  # the query image itself is never its own neighbour
                assert some_id not in [hit.record.id for hit in fast]
            assert used_filter == (path == "chroma fallback" and filled.count(namespace) > 0), wheres
            compared += bool(expected)
    assert compared > 40  # most combinations found something, so the comparison had teeth


def test_the_index_follows_deletes_failed_adds_and_reopening(memory_root: Path) -> None:
    memory = ImageMemory.open(memory_root, image_embedder=tiny_image_embedder)
    records = memory.add_many(
        [noise_image(n) for n in range(6)], kind="input", namespace="u/1", prompts=["red"] * 6, progress=False
    )
    memory.delete(records[0].id)
    with pytest.raises(InvalidMemoryRequestError):  # fails after nothing is written: the index is untouched
        memory.add_many([noise_image(9)], kind="input", namespace="u/1", prompts=["bad \ud800"], progress=False)
    hits = memory.search_text("red", k=10, namespace="u")
    assert sorted(hit.record.id for hit in hits) == sorted(record.id for record in records[1:])
    memory.close()
    with ImageMemory.open(memory_root, image_embedder=tiny_image_embedder) as reopened:
        again = reopened.search_text("red", k=10, namespace="u")
        assert signature(again) == signature(hits)
        assert reopened.search_image(records[1].id, k=10, namespace="u/2") == []  # an empty namespace: no query


def test_relevance_floor_drops_queries_with_nothing_in_common(memory: ImageMemory) -> None:
    red = memory.add(solid_image((250, 0, 0)), kind="generated", namespace="u/t", prompt="a red car on a road")
    memory.add(solid_image((0, 0, 250)), kind="generated", namespace="u/t", prompt="a blue boat at sea")
    for namespace in (None, "u", "u/t"):
        # Used to "match" every stored image at score 0.00.
        assert memory.search_text("../../etc/passwd", k=5, namespace=namespace) == []
        everything = memory.search_text("../../etc/passwd", k=5, namespace=namespace, min_score=-1)
        assert len(everything) == 2 and all(abs(hit.score) < DEFAULT_MIN_TEXT_SCORE for hit in everything)
        assert [hit.record.id for hit in memory.search_text("red car", namespace=namespace)] == [red.id]
    assert memory.min_text_score == DEFAULT_MIN_TEXT_SCORE == 0.1
    assert memory.min_image_score == DEFAULT_MIN_IMAGE_SCORE == -1.0  # image search ranks every stored picture


def test_relevance_floors_are_configurable_and_checked(memory_root: Path) -> None:
    with ImageMemory.open(
        memory_root, image_embedder=tiny_image_embedder, min_text_score=0.99, min_image_score=0.999
    ) as strict:
        kept = strict.add(solid_image((250, 0, 0)), kind="input", namespace="u", prompt="a red car on a road")
        strict.add(solid_image((0, 0, 250)), kind="input", namespace="u", prompt="a boat")
        assert strict.search_text("red car", k=5) == []  # 0.5-ish overlap is below this memory's floor
        assert [hit.record.id for hit in strict.search_text("red car", k=5, min_score=0.2)] == [kept.id]
        for namespace in (None, "u"):
            assert [hit.record.id for hit in strict.search_image(solid_image((250, 0, 0)), namespace=namespace)] == [
                kept.id
            ]
            assert len(strict.search_image(solid_image((250, 0, 0)), namespace=namespace, min_score=-1)) == 2
        for bad in (1.5, -2, "0.1", True, float("nan")):
            with pytest.raises(InvalidMemoryRequestError, match="min_score must be a number between -1 and 1"):
                strict.search_text("red car", min_score=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidMemoryRequestError, match="min_text_score"):
        ImageMemory.open(memory_root, image_embedder=tiny_image_embedder, min_text_score=7)
