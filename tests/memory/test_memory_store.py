"""ImageMemory behaviour: round trips, dedup, search, namespaces, lineage, deletion, argument errors."""

from __future__ import annotations

from datetime import timezone
from pathlib import Path

import numpy as np
import pytest
from memory_helpers import EMBED_DIM, noise_image, solid_image, tiny_image_embedder
from PIL import Image
from seedx_agent.memory import (
    DEFAULT_MIN_TEXT_SCORE,
    EmbeddingMismatchError,
    HashingTextEmbeddings,
    ImageMemory,
    InvalidMemoryRequestError,
    MemoryClosedError,
    UnknownImageError,
)

from seedx_agent.errors import ImageTooLargeError, SeedXError


def stored_files(root: Path) -> list[Path]:
    return sorted(path for path in (root / "images").rglob("*") if path.is_file())


def test_add_get_load_round_trip(memory: ImageMemory, memory_root: Path) -> None:
    image = noise_image(1, size=(33, 17))
    record = memory.add(
        image,
        kind="generated",
        namespace="user:alice/thread:1",
        prompt="a noisy test card",
        caption="static",
        seed=1234,
        model="tiny",
    )
    assert record.id.startswith("img_") and len(record.id) == 20
    assert (record.kind, record.namespace, record.prompt, record.caption) == (
        "generated",
        "user:alice/thread:1",
        "a noisy test card",
        "static",
    )
    assert (record.seed, record.model, record.width, record.height) == (1234, "tiny", 33, 17)
    assert record.created_at.tzinfo == timezone.utc
    assert memory.get(record.id) == record  # every field survives the trip through chroma metadata
    loaded = memory.load(record.id)
    assert loaded.mode == "RGB" and loaded.size == (33, 17)
    assert np.array_equal(np.asarray(loaded), np.asarray(image))
    # The file is content-addressed: images/<first two hex>/<sha256>.png
    path = memory.image_path(record.id)
    assert path == memory_root / "images" / record.content_hash[:2] / f"{record.content_hash}.png"
    assert stored_files(memory_root) == [path]


def test_metadata_is_not_part_of_the_content(memory: ImageMemory) -> None:
    plain = solid_image((10, 200, 30))
    with_info = plain.copy()
    with_info.info["icc_profile"] = b"not really a profile"
    rgba = plain.convert("RGBA")
    hashes = {memory.add(image, kind="input", namespace="u").content_hash for image in (plain, with_info, rgba)}
    assert len(hashes) == 1


def test_identical_content_is_stored_once(memory: ImageMemory, memory_root: Path) -> None:
    first = memory.add(solid_image((1, 2, 3)), kind="input", namespace="user:a", prompt="first")
    second = memory.add(solid_image((1, 2, 3)), kind="generated", namespace="user:b", prompt="second")
    other = memory.add(solid_image((200, 2, 3)), kind="input", namespace="user:a")
    assert first.id != second.id and first.content_hash == second.content_hash != other.content_hash
    assert len(stored_files(memory_root)) == 2
    assert memory.count() == 3
    # The file outlives a record while another record points at the same content.
    memory.delete(first.id)
    assert memory.image_path(second.id).is_file()
    assert np.array_equal(np.asarray(memory.load(second.id)), np.asarray(solid_image((1, 2, 3))))
    memory.delete(second.id)
    assert stored_files(memory_root) == [memory.image_path(other.id)]
    with pytest.raises(UnknownImageError, match=first.id):
        memory.get(first.id)


def test_duplicate_content_reuses_the_stored_embedding(memory_root: Path) -> None:
    calls: list[int] = []

    def counting_embedder(images: list[Image.Image]) -> np.ndarray:
        calls.append(len(images))
        return tiny_image_embedder(images)

    with ImageMemory.open(memory_root, image_embedder=counting_embedder) as memory:
        memory.add(solid_image((5, 5, 5)), kind="input", namespace="u")
        memory.add(solid_image((5, 5, 5)), kind="input", namespace="u")
        memory.add_many([noise_image(3), noise_image(3), noise_image(4)], kind="input", namespace="u", progress=False)
    assert calls == [1, 2]  # the repeat of (5,5,5) and the in-batch duplicate were not re-embedded


def test_search_by_text(memory: ImageMemory) -> None:
    red = memory.add(solid_image((250, 0, 0)), kind="generated", namespace="u", prompt="a red car on a road")
    blue = memory.add(solid_image((0, 0, 250)), kind="generated", namespace="u", prompt="a blue boat at sea")
    memory.add(solid_image((0, 250, 0)), kind="input", namespace="u")  # no text: not in the text index
    hits = memory.search_text("red car", k=5, min_score=-1)  # no floor: every text record, best first
    assert [hit.record.id for hit in hits] == [red.id, blue.id]
    embedder = HashingTextEmbeddings()
    query = embedder.embed_text("red car")
    expected = [float(query @ embedder.embed_text(text)) for text in ("a red car on a road", "a blue boat at sea")]
    assert [hit.score for hit in hits] == pytest.approx(expected, abs=1e-5)
    assert expected[0] > 0.4 and abs(expected[1]) < DEFAULT_MIN_TEXT_SCORE
    assert [hit.record.id for hit in memory.search_text("red car", k=5)] == [red.id]  # the floor drops the boat
    assert [hit.record.id for hit in memory.search_text("boat", k=1)] == [blue.id]
    with pytest.raises(InvalidMemoryRequestError, match="non-empty"):
        memory.search_text("   ")


def test_search_by_image_and_by_id(memory: ImageMemory) -> None:
    records = [
        memory.add(solid_image(colour), kind="input", namespace="u")
        for colour in [(250, 10, 10), (240, 20, 20), (10, 10, 250), (10, 250, 10)]
    ]
    by_pixels = memory.search_image(solid_image((245, 15, 15)), k=2)
    assert {hit.record.id for hit in by_pixels} == {records[0].id, records[1].id}
    by_id = memory.search_image(records[0].id, k=3)
    assert by_id[0].record.id == records[1].id  # nearest other image; the query id itself is left out
    assert records[0].id not in [hit.record.id for hit in by_id] and len(by_id) == 3
    assert by_id[0].score == pytest.approx(
        float(
            tiny_image_embedder([solid_image((250, 10, 10))])[0] @ tiny_image_embedder([solid_image((240, 20, 20))])[0]
        ),
        abs=1e-5,
    )


def test_metadata_filters_in_find_and_search(memory: ImageMemory) -> None:
    small = memory.add(solid_image((9, 9, 9), size=(8, 8)), kind="input", namespace="u", prompt="grey tile", seed=1)
    big = memory.add(solid_image((9, 9, 9), size=(64, 32)), kind="generated", namespace="u", prompt="grey wall", seed=2)
    edited = memory.add(
        solid_image((9, 9, 90)), kind="edited", namespace="u", prompt="grey wall, tinted", parent_id=big.id
    )
    assert [r.id for r in memory.find({"kind": "generated"})] == [big.id]
    assert [r.id for r in memory.find({"width": {"$gte": 30}})] == [big.id]
    assert [r.id for r in memory.find({"$or": [{"seed": 1}, {"kind": "edited"}]})] == [small.id, edited.id]
    assert [r.id for r in memory.find()] == [small.id, big.id, edited.id]  # oldest first
    assert [r.id for r in memory.find(limit=2)] == [small.id, big.id]
    assert [hit.record.id for hit in memory.search_text("grey", k=5, where={"kind": "edited"})] == [edited.id]
    hits = memory.search_image(solid_image((9, 9, 9)), k=5, where={"kind": {"$in": ["input", "edited"]}})
    assert {hit.record.id for hit in hits} == {small.id, edited.id}
    for bad_where, key_word in [
        ({"path": "/etc/passwd"}, "unknown field 'path'"),
        ({"ns_0": "u"}, "unknown field 'ns_0'"),  # internal keys stay internal
        ({"seed": {"$regex": "1"}}, "not a valid condition"),
        ({"$and": []}, "non-empty list"),
        ("kind = input", "non-empty dict"),
    ]:
        with pytest.raises(InvalidMemoryRequestError, match=key_word):
            memory.find(bad_where)


def test_namespace_isolation(memory: ImageMemory) -> None:
    alice = memory.add(solid_image((200, 0, 0)), kind="input", namespace="user:alice", prompt="red kite")
    alice_thread = memory.add(
        solid_image((190, 0, 0)), kind="input", namespace="user:alice/thread:1", prompt="red kite again"
    )
    bob = memory.add(solid_image((200, 0, 0)), kind="input", namespace="user:bob", prompt="red kite")
    alicia = memory.add(solid_image((200, 0, 0)), kind="input", namespace="user:alicia", prompt="red kite")

    def ids(hits: list) -> set[str]:
        return {hit.record.id for hit in hits}

    assert ids(memory.search_text("red kite", k=10, namespace="user:alice")) == {alice.id, alice_thread.id}
    assert ids(memory.search_text("red kite", k=10, namespace="user:alice/thread:1")) == {alice_thread.id}
    assert ids(memory.search_image(solid_image((200, 0, 0)), k=10, namespace="user:bob")) == {bob.id}
    assert {r.id for r in memory.find(namespace="user:alicia")} == {alicia.id}  # a prefix by segment, not by string
    assert memory.count("user:alice") == 2 and memory.count() == 4
    # Reading by id inside a namespace does not reveal records of another one.
    assert memory.get(alice_thread.id, namespace="user:alice").id == alice_thread.id
    with pytest.raises(UnknownImageError, match="in namespace 'user:bob'"):
        memory.load(alice.id, namespace="user:bob")
    with pytest.raises(UnknownImageError):
        memory.delete(alice.id, namespace="user:bob")
    assert memory.get(alice.id).id == alice.id
    for bad_namespace in ["", "user:alice/", "/user", "a//b", " user", "a\nb", "/".join("abcdefghi"), 7]:
        with pytest.raises(InvalidMemoryRequestError, match="namespace"):
            memory.add(solid_image((1, 1, 1)), kind="input", namespace=bad_namespace)


def test_lineage_of_a_three_edit_chain(memory: ImageMemory) -> None:
    root = memory.add(solid_image((100, 100, 100)), kind="generated", namespace="s", prompt="a cat", seed=7)
    chain = [root]
    for step, operation in enumerate(["make it blue", "add a hat", "zoom out"], start=1):
        chain.append(
            memory.add(
                solid_image((100, 100, 100 + 40 * step)),
                kind="edited",
                namespace="s",
                prompt=operation,
                parent_id=chain[-1].id,
                operation=operation,
            )
        )
    side_branch = memory.add(solid_image((1, 100, 100)), kind="edited", namespace="s", parent_id=chain[1].id)
    assert [record.id for record in memory.lineage(chain[-1].id)] == [record.id for record in chain]
    assert [record.operation for record in memory.lineage(chain[-1].id)] == [
        None,
        "make it blue",
        "add a hat",
        "zoom out",
    ]
    assert memory.lineage(root.id) == [root]
    assert [record.id for record in memory.children(chain[1].id)] == [chain[2].id, side_branch.id]
    assert memory.children(chain[-1].id) == []
    # Deleting a middle link: the lineage starts at the first surviving ancestor.
    memory.delete(chain[1].id)
    assert [record.id for record in memory.lineage(chain[-1].id)] == [chain[2].id, chain[3].id]
    with pytest.raises(UnknownImageError, match="img_"):
        memory.add(solid_image((0, 0, 0)), kind="edited", namespace="s", parent_id=chain[1].id)


def test_add_many_batches_and_length_checks(memory: ImageMemory) -> None:
    images = [noise_image(seed) for seed in range(7)]
    records = memory.add_many(
        images,
        kind="generated",
        namespace="bulk",
        prompts=[f"noise number {seed}" for seed in range(7)],
        seeds=list(range(7)),
        model="tiny",
        batch_size=3,
        progress=False,
    )
    assert [record.seed for record in records] == list(range(7))
    assert all(np.array_equal(np.asarray(memory.load(r.id)), np.asarray(i)) for r, i in zip(records, images))
    assert memory.search_text("number 5", k=1)[0].record.id == records[5].id
    with pytest.raises(InvalidMemoryRequestError, match="prompts has 2 entries but 3 images"):
        memory.add_many(images[:3], kind="input", namespace="bulk", prompts=["a", "b"])
    assert memory.count() == 7


def test_add_many_shows_progress(memory: ImageMemory, capsys: pytest.CaptureFixture[str]) -> None:
    memory.add_many([noise_image(seed) for seed in range(3)], kind="input", namespace="bulk", batch_size=2)
    assert "storing images" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "key_words"),
    [
        ({"kind": "painted"}, "kind must be one of"),
        ({"seed": -1}, "seed"),
        ({"seed": "42"}, "seed"),
        ({"prompt": 5}, "prompt must be a string"),
        ({"operation": ["crop"]}, "operation must be a string"),
    ],
)
def test_bad_record_fields_are_refused(memory: ImageMemory, arguments: dict, key_words: str) -> None:
    fields = {"kind": "input", "namespace": "u", **arguments}
    with pytest.raises(InvalidMemoryRequestError, match=key_words):
        memory.add(solid_image((3, 3, 3)), **fields)
    assert memory.count() == 0


def test_image_checks(memory_root: Path) -> None:
    with ImageMemory.open(memory_root, image_embedder=tiny_image_embedder, max_pixels=100) as memory:
        with pytest.raises(ImageTooLargeError, match="max_pixels=100"):
            memory.add(solid_image((1, 1, 1), size=(20, 20)), kind="input", namespace="u")
        with pytest.raises(InvalidMemoryRequestError, match="looks like a memory id"):
            memory.add("img_0123456789abcdef", kind="input", namespace="u")
        assert memory.count() == 0


@pytest.mark.parametrize("k", [0, -1, 1001, 2.0, True, "3"])
def test_k_is_validated(memory: ImageMemory, k: object) -> None:
    with pytest.raises(InvalidMemoryRequestError, match="k must be an int between 1 and 1000"):
        memory.search_text("cat", k=k)


def test_embedder_output_is_checked(memory_root: Path) -> None:
    with ImageMemory.open(memory_root, image_embedder=lambda images: np.zeros((len(images) + 1, 4))) as memory:
        with pytest.raises(EmbeddingMismatchError, match=r"shape \(2, 4\) for 1 inputs"):
            memory.add(solid_image((1, 1, 1)), kind="input", namespace="u")
    with ImageMemory.open(memory_root, image_embedder=tiny_image_embedder) as memory:
        memory.add(solid_image((1, 1, 1)), kind="input", namespace="u")

    def wider(images: list[Image.Image]) -> np.ndarray:
        return np.ones((len(images), EMBED_DIM + 1), dtype=np.float32)

    with ImageMemory.open(memory_root, image_embedder=wider) as memory:
        with pytest.raises(
            EmbeddingMismatchError, match=f"{EMBED_DIM + 1}-d vectors but this memory was built with {EMBED_DIM}-d"
        ):
            memory.add(solid_image((2, 1, 1)), kind="input", namespace="u")
        assert memory.count() == 1


def test_custom_text_embedder_and_open_arguments(memory_root: Path) -> None:
    embedder = HashingTextEmbeddings(dim=32)
    with ImageMemory.open(memory_root, image_embedder=tiny_image_embedder, text_embedder=embedder) as memory:
        record = memory.add(solid_image((1, 1, 1)), kind="input", namespace="u", caption="tiny embedder")
        assert memory.search_text("embedder", k=1)[0].record == record
    with pytest.raises(InvalidMemoryRequestError, match="Embeddings"):
        ImageMemory.open(memory_root, image_embedder=tiny_image_embedder, text_embedder=lambda texts: texts)
    with pytest.raises(InvalidMemoryRequestError, match="image_embedder must be a callable"):
        ImageMemory.open(memory_root, image_embedder=None)
    with pytest.raises(InvalidMemoryRequestError, match="client must be 'persistent' or ChromaServer"):
        ImageMemory.open(memory_root, image_embedder=tiny_image_embedder, client="sqlite")
    # A failed open releases the lock: the root can be opened again right away.
    with ImageMemory.open(memory_root, image_embedder=tiny_image_embedder) as memory:
        assert memory.count() == 1


def test_persistence_and_closed_state(memory_root: Path) -> None:
    memory = ImageMemory.open(memory_root, image_embedder=tiny_image_embedder)
    record = memory.add(noise_image(9), kind="input", namespace="u", prompt="kept across opens")
    memory.close()
    memory.close()  # idempotent
    assert memory.closed
    with pytest.raises(MemoryClosedError, match="closed"):
        memory.get(record.id)
    with ImageMemory.open(memory_root, image_embedder=tiny_image_embedder) as reopened:
        assert reopened.get(record.id) == record
        assert reopened.search_text("kept", k=1)[0].record == record
        assert reopened.last_repair is not None and reopened.last_repair.clean


def test_errors_share_the_library_base(memory: ImageMemory) -> None:
    with pytest.raises(SeedXError):
        memory.get("img_ffffffffffffffff")
