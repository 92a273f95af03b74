"""ImageMemoryStore against LangGraph's store contract, with InMemoryStore as the reference behaviour."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore, InvalidNamespaceError, Item
from langgraph.store.memory import InMemoryStore
from memory_helpers import solid_image, tiny_image_embedder
from seedx_agent.memory import (
    HashingTextEmbeddings,
    ImageMemory,
    ImageMemoryStore,
    InvalidMemoryRequestError,
    MemoryClosedError,
)
from typing_extensions import TypedDict

ITEMS: list[tuple[tuple[str, ...], str, dict[str, Any]]] = [
    (("users", "alice", "prefs"), "style", {"text": "watercolour paintings of cats", "kind": "pref", "score": 5}),
    (("users", "alice", "prefs"), "size", {"text": "square images", "kind": "pref", "score": 2}),
    (("users", "alice", "facts"), "pet", {"text": "has a ginger cat", "kind": "fact", "meta": {"lang": "en"}}),
    (("users", "alice", "facts"), "city", {"text": "lives in Lyon", "kind": "fact", "meta": {"lang": "fr"}}),
    (("users", "bob", "prefs"), "style", {"text": "pixel art robots", "kind": "pref", "score": 4}),
    (("stories", "s1"), "hero", {"text": "a ginger cat in a red scarf", "tags": ["cat", "scarf"]}),
]


@pytest.fixture
def stores(memory: ImageMemory) -> tuple[InMemoryStore, ImageMemoryStore]:
    """The reference store and ours, both embedding the ``text`` field with the same embedder."""
    reference = InMemoryStore(index={"dims": 256, "embed": HashingTextEmbeddings(), "fields": ["text"]})
    ours = ImageMemoryStore(memory, index_fields=["text"])
    for store in (reference, ours):
        for namespace, key, value in ITEMS:
            store.put(namespace, key, value)
    return reference, ours


def view(items: list[Item] | None) -> list[tuple]:
    """What the contract fixes about results: namespace, key, value (timestamps are per store)."""
    return [(item.namespace, item.key, item.value) for item in items or []]


def test_is_a_base_store(stores: tuple[InMemoryStore, ImageMemoryStore]) -> None:
    assert isinstance(stores[1], BaseStore)


def test_get_matches_reference(stores: tuple[InMemoryStore, ImageMemoryStore]) -> None:
    reference, ours = stores
    for namespace, key, _ in ITEMS:
        assert view([ours.get(namespace, key)]) == view([reference.get(namespace, key)])
    assert ours.get(("users", "alice", "prefs"), "missing") is None
    assert ours.get(("users", "alice"), "style") is None  # a namespace prefix is not the namespace


@pytest.mark.parametrize(
    "search",
    [
        {"namespace_prefix": ("users",)},
        {"namespace_prefix": ("users", "alice")},
        {"namespace_prefix": ()},
        {"namespace_prefix": ("users", "ali")},  # labels match whole, never by string prefix
        {"namespace_prefix": ("users",), "filter": {"kind": "pref"}},
        {"namespace_prefix": ("users",), "filter": {"kind": "pref", "score": {"$gte": 4}}},
        {"namespace_prefix": ("users",), "filter": {"kind": "pref", "score": {"$lt": 5, "$ne": 2}}},
        {"namespace_prefix": ("users",), "filter": {"meta": {"lang": "fr"}}},
        {"namespace_prefix": (), "filter": {"tags": ["cat", "scarf"]}},
        {"namespace_prefix": ("users",), "limit": 2},
        {"namespace_prefix": ("users",), "limit": 2, "offset": 2},
        {"namespace_prefix": ("users",), "limit": 10, "offset": 4},
        {"namespace_prefix": ("users",), "offset": 99},
    ],
)
def test_search_without_query_matches_reference(stores: tuple[InMemoryStore, ImageMemoryStore], search: dict) -> None:
    reference, ours = stores
    prefix = search.pop("namespace_prefix")
    expected = view(reference.search(prefix, **search))
    assert view(ours.search(prefix, **search)) == expected
    assert all(item.score is None for item in ours.search(prefix, **search))


@pytest.mark.parametrize(
    "search",
    [
        {"query": "ginger cat"},
        {"query": "ginger cat", "limit": 2},
        {"query": "ginger cat", "limit": 2, "offset": 1},
        {"query": "cat paintings", "filter": {"kind": "pref"}},
        {"query": "robots", "namespace_prefix": ("users", "bob")},
    ],
)
def test_query_search_matches_reference(stores: tuple[InMemoryStore, ImageMemoryStore], search: dict) -> None:
    reference, ours = stores
    prefix = search.pop("namespace_prefix", ())
    expected = reference.search(prefix, **search)
    got = ours.search(prefix, **search)
    assert view(got) == view(expected)
    assert [item.score for item in got] == pytest.approx([item.score for item in expected], abs=1e-5)
    assert got and got[0].score is not None and got[0].score > 0.3


def test_put_updates_and_reindexes(stores: tuple[InMemoryStore, ImageMemoryStore]) -> None:
    reference, ours = stores
    before = ours.get(("users", "alice", "prefs"), "style")
    time.sleep(0.002)
    for store in stores:
        store.put(("users", "alice", "prefs"), "style", {"text": "ink drawings of dogs", "kind": "pref", "score": 1})
    after = ours.get(("users", "alice", "prefs"), "style")
    assert after.value == {"text": "ink drawings of dogs", "kind": "pref", "score": 1}
    assert after.created_at == before.created_at and after.updated_at > before.updated_at
    assert view(ours.search(("users",))) == view(reference.search(("users",)))  # position kept on update
    top = ours.search(("users",), query="dogs", limit=1)
    assert view(top) == view(reference.search(("users",), query="dogs", limit=1))
    assert top[0].key == "style"
    old_text_hits = ours.search(("users", "alice", "prefs"), query="watercolour paintings", limit=10)
    assert {item.key: item.score for item in old_text_hits}["style"] == pytest.approx(0.0, abs=1e-6)  # old vector gone


def test_index_options_match_reference(memory: ImageMemory) -> None:
    reference = InMemoryStore(index={"dims": 256, "embed": HashingTextEmbeddings(), "fields": ["text"]})
    ours = ImageMemoryStore(memory, index_fields=["text"])
    for store in (reference, ours):
        store.put(("notes",), "plain", {"text": "blue whale", "other": "ignored"})
        store.put(("notes",), "unindexed", {"text": "blue whale"}, index=False)
        store.put(("notes",), "by_other", {"text": "nothing", "other": "blue whale song"}, index=["other"])
        store.put(("notes",), "tags", {"text": "x", "tags": ["whale", "blue sea"]}, index=["tags[*]"])
    for search in ({"query": "blue whale"}, {"query": "blue whale", "limit": 2}, {"query": "whale", "limit": 10}):
        expected = reference.search(("notes",), **search)
        got = ours.search(("notes",), **search)
        assert view(got) == view(expected)
        assert [item.score for item in got] == pytest.approx([item.score for item in expected], abs=1e-5)
    unindexed = [item for item in ours.search(("notes",), query="blue whale") if item.key == "unindexed"]
    assert unindexed[0].score is None  # not embedded, appended after the scored items


def test_delete_matches_reference(stores: tuple[InMemoryStore, ImageMemoryStore]) -> None:
    reference, ours = stores
    for store in stores:
        store.delete(("users", "alice", "facts"), "pet")
        store.put(("users", "bob", "prefs"), "style", None)  # put(None) is a delete too
    assert ours.get(("users", "alice", "facts"), "pet") is None
    assert view(ours.search(("users",))) == view(reference.search(("users",)))
    assert view(ours.search((), query="ginger cat")) == view(reference.search((), query="ginger cat"))
    ours.delete(("users", "alice", "facts"), "never-existed")  # deleting a missing key is a no-op


@pytest.mark.parametrize(
    "listing",
    [
        {},
        {"prefix": ("users",)},
        {"prefix": ("users", "*", "prefs")},
        {"suffix": ("prefs",)},
        {"suffix": ("*", "facts")},
        {"prefix": ("users",), "suffix": ("facts",)},
        {"max_depth": 2},
        {"prefix": ("users",), "max_depth": 2},
        {"limit": 2},
        {"limit": 2, "offset": 1},
        {"prefix": ("nothing",)},
    ],
)
def test_list_namespaces_matches_reference(stores: tuple[InMemoryStore, ImageMemoryStore], listing: dict) -> None:
    reference, ours = stores
    assert ours.list_namespaces(**listing) == reference.list_namespaces(**listing)


def test_ordering_filter_on_a_missing_field_matches_nothing(stores: tuple[InMemoryStore, ImageMemoryStore]) -> None:
    # InMemoryStore raises TypeError here (float(None)); we follow the database stores: no match.
    assert [item.key for item in stores[1].search(("users",), filter={"score": {"$gt": 3}})] == ["style", "style"]


def test_namespaces_without_items_are_not_listed(memory: ImageMemory) -> None:
    store = ImageMemoryStore(memory)
    store.put(("a", "b"), "k", {"v": 1})
    store.delete(("a", "b"), "k")
    assert store.list_namespaces() == []  # InMemoryStore keeps listing emptied namespaces; sqlite/postgres do not


def test_batch_runs_in_order_and_async_api(stores: tuple[InMemoryStore, ImageMemoryStore]) -> None:
    from langgraph.store.base import GetOp, ListNamespacesOp, PutOp, SearchOp

    _, ours = stores
    results = ours.batch(
        [
            PutOp(("tmp",), "k", {"text": "first"}),
            GetOp(("tmp",), "k"),
            PutOp(("tmp",), "k", {"text": "second"}),
            SearchOp(("tmp",), query="second"),
            ListNamespacesOp(max_depth=1),
        ]
    )
    assert results[0] is None and results[1].value == {"text": "first"}
    assert [item.value for item in results[3]] == [{"text": "second"}]
    assert results[4] == [("stories",), ("tmp",), ("users",)]

    async def use_async() -> tuple:
        await ours.aput(("tmp",), "async", {"text": "written asynchronously"})
        item = await ours.aget(("tmp",), "async")
        hits = await ours.asearch(("tmp",), query="asynchronously", limit=1)
        await ours.adelete(("tmp",), "async")
        return item, hits, await ours.aget(("tmp",), "async")

    item, hits, gone = asyncio.run(use_async())
    assert item.value == {"text": "written asynchronously"} and hits[0].key == "async" and gone is None


def test_invalid_operations_are_refused(stores: tuple[InMemoryStore, ImageMemoryStore]) -> None:
    from langgraph.store.base import PutOp

    _, ours = stores
    with pytest.raises(InvalidNamespaceError):
        ours.put(("bad.label",), "k", {"v": 1})
    with pytest.raises(InvalidNamespaceError):
        ours.batch([PutOp(("a.b",), "k", {"v": 1})])  # ops sent straight to batch are checked too
    with pytest.raises(InvalidNamespaceError):
        ours.put((), "k", {"v": 1})
    with pytest.raises(InvalidMemoryRequestError, match="JSON-serialisable"):
        ours.put(("x",), "k", {"image": solid_image((1, 1, 1))})
    with pytest.raises(InvalidMemoryRequestError, match="unsupported filter operator"):
        ours.search(("users",), filter={"score": {"$regex": "5"}})
    with pytest.raises(NotImplementedError):
        ours.put(("x",), "k", {"v": 1}, ttl=5)  # BaseStore refuses TTLs for stores without TTL support
    assert ours.get(("x",), "k") is None  # nothing from the failed calls was written


def test_items_persist_with_the_memory_root(memory_root: Path) -> None:
    with ImageMemory.open(memory_root, image_embedder=tiny_image_embedder) as memory:
        store = ImageMemoryStore(memory)
        store.put(("users", "alice"), "profile", {"name": "Alice", "likes": "cats"})
        record = memory.add(solid_image((1, 2, 3)), kind="input", namespace="user:alice")
        store.put(("users", "alice"), "avatar", {"image_id": record.id})
    with pytest.raises(MemoryClosedError):
        store.get(("users", "alice"), "profile")  # closing the memory closed the store with it
    with ImageMemory.open(memory_root, image_embedder=tiny_image_embedder) as memory:
        store = ImageMemoryStore(memory)
        assert store.get(("users", "alice"), "profile").value == {"name": "Alice", "likes": "cats"}
        avatar_id = store.get(("users", "alice"), "avatar").value["image_id"]
        assert store.memory.get(avatar_id) == record
        assert store.search(("users",), query="cats", limit=1)[0].key == "profile"


def test_works_as_a_graph_store(memory: ImageMemory) -> None:
    from langgraph.runtime import Runtime

    class State(TypedDict):
        user: str
        note: str
        recalled: list[str]

    def remember(state: State, runtime: Runtime) -> dict:
        runtime.store.put(("users", state["user"], "notes"), str(len(state["note"])), {"text": state["note"]})
        hits = runtime.store.search(("users", state["user"]), query="cat", limit=3)
        return {"recalled": [hit.value["text"] for hit in hits]}

    builder = StateGraph(State)
    builder.add_node("remember", remember)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", END)
    graph = builder.compile(store=ImageMemoryStore(memory))
    graph.invoke({"user": "alice", "note": "draw the dog", "recalled": []})
    result = graph.invoke({"user": "alice", "note": "the cat wears a red scarf", "recalled": []})
    assert result["recalled"][0] == "the cat wears a red scarf"
    assert set(result["recalled"]) == {"the cat wears a red scarf", "draw the dog"}
