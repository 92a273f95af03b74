"""Crash safety: every record keeps its file and every file its record, whatever point a write dies at.

In-process cases make chroma (the outside boundary) fail at each step of a write, including the in-process
rollback, so the on-disk state is what a crash there leaves; the subprocess cases SIGKILL a real ingesting
process at random moments and check the invariants after the next open.
"""

from __future__ import annotations

import hashlib
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from chromadb.api.models.Collection import Collection
from memory_helpers import noise_image, solid_image, start_worker, tiny_image_embedder
from memory_worker import BATCH_IMAGES, BATCH_NAMESPACE, BATCH_SIZE
from PIL import Image
from seedx_agent.memory import ImageMemory, InvalidMemoryRequestError, UnknownImageError
from seedx_agent.memory.files import Journal

from seedx_agent.errors import InvalidImageError


class ChromaDown(RuntimeError):
    """Stands in for chroma failing (disk full, process dying) at a chosen call."""


def fail_on(monkeypatch: pytest.MonkeyPatch, method: str, collection_suffix: str) -> None:
    """Make ``Collection.<method>`` raise for collections whose name ends with ``collection_suffix``."""
    original: Callable = getattr(Collection, method)

    def failing(self: Collection, *args: object, **kwargs: object) -> object:
        if self.name.endswith(collection_suffix):
            raise ChromaDown(f"{method} on {self.name}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Collection, method, failing)


def image_files(root: Path) -> set[str]:
    return {path.name for path in (root / "images").rglob("*") if path.is_file()}


def reopen(root: Path) -> ImageMemory:
    return ImageMemory.open(root, image_embedder=tiny_image_embedder)


def test_failed_add_is_rolled_back_in_process(memory: ImageMemory, memory_root: Path) -> None:
    kept = memory.add(solid_image((1, 1, 1)), kind="input", namespace="u", prompt="kept")
    with pytest.MonkeyPatch.context() as patch:
        fail_on(patch, "add", "_images_text")  # visual record written, text record fails
        with pytest.raises(ChromaDown):
            memory.add(noise_image(1), kind="input", namespace="u", prompt="lost")
        with pytest.raises(ChromaDown):  # the shared file of `kept` must survive a failed duplicate add
            memory.add(solid_image((1, 1, 1)), kind="input", namespace="u", prompt="lost too")
    assert [record.id for record in memory.find()] == [kept.id]
    assert image_files(memory_root) == {f"{kept.content_hash}.png"}
    assert (memory_root / "journal.jsonl").read_bytes() == b""
    assert [hit.record.id for hit in memory.search_text("lost kept", k=5)] == [kept.id]


@pytest.mark.parametrize(
    ("failing_call", "rolled_back"),
    [
        (("add", "_images_visual"), 0),  # died after the journal intent, before any record
        (("add", "_images_text"), 1),  # died between the visual and the text record
    ],
)
def test_crash_during_add_is_repaired_on_open(
    memory_root: Path, failing_call: tuple[str, str], rolled_back: int
) -> None:
    memory = reopen(memory_root)
    kept = memory.add(solid_image((1, 1, 1)), kind="input", namespace="u", prompt="kept")
    with pytest.MonkeyPatch.context() as patch:
        fail_on(patch, *failing_call)
        fail_on(patch, "delete", "_images_text")  # the in-process rollback dies too: as if the process did
        with pytest.raises(ChromaDown):
            memory.add(noise_image(2), kind="generated", namespace="u", prompt="half written")
        memory.close()
    assert (memory_root / "journal.jsonl").read_bytes() != b""
    assert len(image_files(memory_root)) == 2

    with reopen(memory_root) as repaired:
        report = repaired.last_repair
        assert (report.rolled_back_adds, report.orphan_files) == (rolled_back, 1)
        assert [record.id for record in repaired.find()] == [kept.id]
        assert [hit.record.id for hit in repaired.search_text("half written kept", k=5)] == [kept.id]
        assert image_files(memory_root) == {f"{kept.content_hash}.png"}
        assert (memory_root / "journal.jsonl").read_bytes() == b""
        assert repaired.repair().clean


def test_crash_during_delete_is_finished_on_open(memory_root: Path) -> None:
    memory = reopen(memory_root)
    doomed = memory.add(noise_image(3), kind="input", namespace="u", prompt="doomed")
    kept = memory.add(noise_image(4), kind="input", namespace="u", prompt="kept")
    with pytest.MonkeyPatch.context() as patch:
        fail_on(patch, "delete", "_images_visual")  # text entry gone, visual record and file still there
        with pytest.raises(ChromaDown):
            memory.delete(doomed.id)
        memory.close()
    with reopen(memory_root) as repaired:
        assert repaired.last_repair.completed_deletes == 1
        assert repaired.last_repair.orphan_files == 1
        with pytest.raises(UnknownImageError):
            repaired.get(doomed.id)
        assert image_files(memory_root) == {f"{kept.content_hash}.png"}
        assert repaired.repair().clean


def test_lost_journal_still_leaves_no_half_records(memory_root: Path) -> None:
    memory = reopen(memory_root)
    kept = memory.add(noise_image(5), kind="input", namespace="u", prompt="kept")
    with pytest.MonkeyPatch.context() as patch:
        fail_on(patch, "add", "_images_text")
        fail_on(patch, "delete", "_images_text")
        with pytest.raises(ChromaDown):
            memory.add(noise_image(6), kind="input", namespace="u", prompt="no text entry")
        memory.close()
    (memory_root / "journal.jsonl").write_bytes(b"")  # the full scan must catch it without the journal
    with reopen(memory_root) as repaired:
        assert (repaired.last_repair.incomplete_records, repaired.last_repair.orphan_files) == (1, 1)
        assert [record.id for record in repaired.find()] == [kept.id]


def test_records_without_files_and_stray_files(memory_root: Path) -> None:
    memory = reopen(memory_root)
    kept = memory.add(noise_image(7), kind="input", namespace="u", prompt="kept")
    lost = memory.add(noise_image(8), kind="input", namespace="u", prompt="file deleted behind our back")
    memory.close()
    (memory_root / "images" / lost.content_hash[:2] / f"{lost.content_hash}.png").unlink()
    orphan_bytes = b"\x89PNG orphan written just before a crash"
    orphan_hash = hashlib.sha256(orphan_bytes).hexdigest()
    (memory_root / "images" / orphan_hash[:2]).mkdir(parents=True, exist_ok=True)
    (memory_root / "images" / orphan_hash[:2] / f"{orphan_hash}.png").write_bytes(orphan_bytes)
    (memory_root / "images" / kept.content_hash[:2] / f".{kept.content_hash}.png.1234abcd.tmp").write_bytes(b"half")
    (memory_root / "images" / "notes.txt").write_text("not ours")
    with (memory_root / "journal.jsonl").open("ab") as journal:
        journal.write(b'{"op":"add","ids":["img_00')  # a line torn by the crash

    with reopen(memory_root) as repaired:
        report = repaired.last_repair
        assert report.records_without_file == 1 and report.orphan_files == 1 and report.temp_files == 1
        assert report.torn_journal_lines == 1 and report.unknown_files == 1 and not report.clean
        assert [record.id for record in repaired.find()] == [kept.id]
        assert [hit.record.id for hit in repaired.search_text("file deleted kept", k=5)] == [kept.id]
        assert image_files(memory_root) == {f"{kept.content_hash}.png", "notes.txt"}
        assert (memory_root / "images" / "notes.txt").read_text() == "not ours"


def run_kill_trial(root: Path, trial: int, added: dict[str, int], deleted: set[str]) -> None:
    """Ingest in a subprocess, SIGKILL it at a random moment, reopen and check every invariant.

    ``added`` (id -> image number) and ``deleted`` accumulate what workers reported across trials on ``root``.
    """
    rng = random.Random(trial)
    worker = start_worker("ingest", root)
    try:
        ready = worker.stdout.readline()
        assert ready.startswith("ready"), worker.stderr.read()
        first = worker.stdout.readline()  # wait for the first stored image: a loaded machine can be slow to start
        assert first.startswith("add "), first + worker.stderr.read()
        time.sleep(rng.uniform(0.0, 0.6))
    finally:
        worker.send_signal(signal.SIGKILL)
        output, _ = worker.communicate(timeout=30)
    lines = [first.rstrip("\n"), *output.split("\n")[:-1]]  # the last piece may be a line cut by the kill
    assert not any(line.startswith("network") for line in lines), lines
    reported = {line.split()[2]: int(line.split()[1]) for line in lines if line.startswith("add ")}
    assert reported, "the worker was killed before it stored anything; increase the delay"
    added.update(reported)
    deleted.update(line.split()[1] for line in lines if line.startswith("del "))
    # A delete cut by the kill may or may not have happened; either way it is no longer expected to exist.
    in_flight_delete = {line.split()[1] for line in lines if line.startswith("deleting ")} - deleted
    deleted.update(in_flight_delete)

    with reopen(root) as memory:
        records = {record.id: record for record in memory.find()}
        # Everything a worker was told is stored survived; everything it was told is deleted is gone.
        assert set(added) - deleted <= set(records)
        assert not (deleted - in_flight_delete) & set(records)
        # Only the call in flight may be unreported: records that committed before the kill but whose ``add``
        # lines were never printed, at most one add_many call of 3 images (its batches of 2 and 1 may both
        # have committed). Their pixels are one of the worker's contents.
        unreported = set(records) - set(added)
        assert len(unreported) <= 3, unreported
        contents = [np.asarray(noise_image(n)) for n in range(5)]
        for image_id, record in records.items():
            pixels = np.asarray(memory.load(image_id))
            if added.get(image_id, -1) >= 0:
                assert np.array_equal(pixels, contents[added[image_id] % 5])
                assert record.prompt == f"item {added[image_id]}"
            else:
                assert any(np.array_equal(pixels, content) for content in contents)
        # Files and records match one to one (by content), nothing temporary is left, the journal is empty.
        assert image_files(root) == {f"{record.content_hash}.png" for record in records.values()}
        assert (root / "journal.jsonl").read_bytes() == b""
        # The text index holds exactly the surviving records.
        assert {hit.record.id for hit in memory.search_text("item", k=1000)} == set(records)
        assert memory.repair().clean
    added.update({image_id: -1 for image_id in unreported})  # -1: survived, image number unknown
    deleted.difference_update(in_flight_delete & set(records))  # a delete that never started: still expected


@pytest.mark.parametrize("trial", range(3))
def test_sigkill_while_ingesting(tmp_path: Path, trial: int) -> None:
    run_kill_trial(tmp_path / "memory", trial, {}, set())


@pytest.mark.slow
def test_sigkill_while_ingesting_many_times(tmp_path: Path) -> None:
    root = tmp_path / "memory"
    added: dict[str, int] = {}
    deleted: set[str] = set()
    for trial in range(20):  # the same root each time: damage must not accumulate across crashes
        run_kill_trial(root, 100 + trial, added, deleted)


# ------------------------------------------------------------------------------------------------ add_many


def failing_after(calls: int) -> Callable[[list[Image.Image]], np.ndarray]:
    """The tiny embedder, raising ChromaDown on its call number ``calls + 1``."""
    made = 0

    def embedder(images: list[Image.Image]) -> np.ndarray:
        nonlocal made
        made += 1
        if made > calls:
            raise ChromaDown(f"embedder call {made}")
        return tiny_image_embedder(images)

    return embedder


def test_failed_add_many_rolls_back_the_batches_it_already_wrote(memory_root: Path) -> None:
    with ImageMemory.open(memory_root, image_embedder=failing_after(3)) as memory:
        kept = memory.add(solid_image((1, 1, 1)), kind="input", namespace="u", prompt="kept")
        with pytest.raises(ChromaDown, match="embedder call 4"):  # batches 1 and 2 were stored, batch 3 fails
            memory.add_many(
                [noise_image(n) for n in range(7)], kind="input", namespace="u/batch", batch_size=2, progress=False
            )
        assert [record.id for record in memory.find()] == [kept.id]
        assert memory.count("u/batch") == 0 and memory.search_text("item", k=10, namespace="u") == []
        assert image_files(memory_root) == {f"{kept.content_hash}.png"}
        assert (memory_root / "journal.jsonl").read_bytes() == b""
        assert memory.repair().clean


def test_a_bad_image_late_in_add_many_stores_nothing(memory: ImageMemory, memory_root: Path) -> None:
    images: list[object] = [noise_image(n) for n in range(9)]
    images[7] = b"not an image at all"
    with pytest.raises(InvalidImageError):
        memory.add_many(images, kind="input", namespace="u", batch_size=3, progress=False)
    assert memory.find() == [] and image_files(memory_root) == set()
    with pytest.raises(InvalidMemoryRequestError, match="prompt 4 holds an invalid character"):  # checked up front
        memory.add_many(
            [noise_image(n) for n in range(6)],
            kind="input",
            namespace="u",
            prompts=[f"p{n}" if n != 4 else "bad \ud800" for n in range(6)],
            batch_size=2,
            progress=False,
        )
    assert memory.find() == [] and image_files(memory_root) == set()


def test_crash_mid_add_many_is_rolled_back_on_open(memory_root: Path) -> None:
    memory = reopen(memory_root)
    kept = memory.add(solid_image((1, 1, 1)), kind="input", namespace="u", prompt="kept")
    added = 0
    original_add = Collection.add

    def add_then_die(self: Collection, *args: object, **kwargs: object) -> object:
        nonlocal added
        if self.name.endswith("_images_visual"):
            added += 1
            if added == 3:  # the third batch dies; the first two are in chroma
                raise ChromaDown("add on the third batch")
        return original_add(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Collection, "add", add_then_die)
        fail_on(patch, "delete", "_images_text")  # the in-process rollback dies too: as if the process did
        with pytest.raises(ChromaDown):
            memory.add_many(
                [noise_image(n) for n in range(6)], kind="input", namespace="u", prompts=["x"] * 6, batch_size=2
            )
        memory.close()
    assert (memory_root / "journal.jsonl").read_bytes() != b""
    with reopen(memory_root) as repaired:
        assert repaired.last_repair.rolled_back_adds == 4  # both stored batches, although each had "committed"
        assert [record.id for record in repaired.find()] == [kept.id]
        assert image_files(memory_root) == {f"{kept.content_hash}.png"}
        assert repaired.repair().clean


def test_journal_keeps_an_open_transaction_when_another_commits(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.begin({"op": "add", "ids": ["img_000000000000000a"], "txn": "a"})
    journal.begin({"op": "add", "ids": ["img_000000000000000b"], "txn": "b"})
    journal.begin({"op": "add", "ids": ["img_000000000000000c"], "txn": "a"})  # a second batch of "a"
    journal.commit("b")  # "b" finished first: "a" must still be repaired after a crash now
    pending, torn = Journal(tmp_path / "journal.jsonl").pending()  # as the next open reads it
    assert torn == 0 and [entry["ids"] for entry in pending] == [["img_000000000000000a"], ["img_000000000000000c"]]
    journal.commit("a")
    assert (tmp_path / "journal.jsonl").read_bytes() == b""


def run_batch_kill_trial(root: Path, kill_after_batches: int) -> None:
    """One 200-image ``add_many`` in a subprocess, SIGKILLed after its ``kill_after_batches``-th embedder call;
    after reopening, that call's records are all there or none are: never a partial count."""
    worker = start_worker("batch", root)
    lines: list[str] = []
    try:
        while True:
            line = worker.stdout.readline()
            assert line, "the worker ended early: " + worker.stderr.read()
            lines.append(line.rstrip("\n"))
            if line.startswith(("embedded", "done")) and (
                line.startswith("done") or int(line.split()[1]) >= kill_after_batches
            ):
                break
    finally:
        worker.send_signal(signal.SIGKILL)
        output, _ = worker.communicate(timeout=30)
    lines += output.split("\n")[:-1]
    (kept,) = [line.split()[1] for line in lines if line.startswith("kept ")]
    acknowledged = any(line.startswith("done") for line in lines)

    with reopen(root) as memory:
        stored = memory.count(BATCH_NAMESPACE)
        assert stored in (0, BATCH_IMAGES), f"a partial batch survived: {stored} of {BATCH_IMAGES} records"
        if acknowledged:
            assert stored == BATCH_IMAGES
        if not acknowledged and kill_after_batches >= 2:  # batches were stored before the kill: repair undid them
            assert memory.last_repair.rolled_back_adds >= BATCH_SIZE or stored == BATCH_IMAGES
        assert [record.id for record in memory.find(namespace="crash/kept")] == [kept]
        records = memory.find()
        assert image_files(root) == {f"{record.content_hash}.png" for record in records}
        assert {hit.record.id for hit in memory.search_text("batch item kept", k=1000, min_score=-1)} == {
            record.id for record in records
        }
        assert (root / "journal.jsonl").read_bytes() == b""
        assert memory.repair().clean


@pytest.mark.parametrize("kill_after_batches", [2, 5, 8])
def test_sigkill_during_a_200_image_add_many_leaves_all_or_nothing(tmp_path: Path, kill_after_batches: int) -> None:
    run_batch_kill_trial(tmp_path / "memory", kill_after_batches)
