"""Shared mode: several processes on one memory root and one real chroma server (``chroma run`` on loopback).

What a Ray deployment or several server workers need: concurrent adds, deletes and recalls from two processes with
nothing lost, no lock error and no orphan; single-process and shared opens refusing each other with a clear
message; and a process killed mid-transaction rolled back by a live peer without touching anyone else's records.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from memory_helpers import noise_image, start_worker, tiny_image_embedder
from seedx_agent.memory import (
    ChromaServer,
    ImageMemory,
    InvalidMemoryRequestError,
    MemoryLockedError,
    parse_chroma_address,
)


def _open_shared(root: Path, server: ChromaServer, **options: object) -> ImageMemory:
    return ImageMemory.open(root, image_embedder=tiny_image_embedder, client=server, shared=True, **options)


def test_shared_mode_needs_a_chroma_server_and_a_sane_timeout(memory_root: Path, chroma_server: ChromaServer) -> None:
    with pytest.raises(InvalidMemoryRequestError, match=r"shared=True needs a chroma server.*ChromaServer"):
        ImageMemory.open(memory_root, image_embedder=tiny_image_embedder, shared=True)
    with pytest.raises(InvalidMemoryRequestError, match="lock_timeout must be a positive number"):
        _open_shared(memory_root, chroma_server, lock_timeout=0)
    with pytest.raises(InvalidMemoryRequestError, match="shared must be True or False"):
        ImageMemory.open(memory_root, image_embedder=tiny_image_embedder, client=chroma_server, shared="yes")
    assert not (memory_root / ".lock.owner").exists()  # refused before anything was locked or written


def test_two_opens_in_one_process_share_and_see_each_others_writes(
    memory_root: Path, chroma_server: ChromaServer
) -> None:
    with _open_shared(memory_root, chroma_server) as first, _open_shared(memory_root, chroma_server) as second:
        assert first.shared and not first.namespace_fast_path and first.vector_cache.max_bytes == 0
        record = first.add(noise_image(1), kind="input", namespace="u/a", prompt="a lighthouse at dusk")
        assert second.get(record.id) == record
        second.namespace_fast_path = True  # ignored in shared mode: its in-process index never saw this add
        assert [hit.record.id for hit in second.search_text("lighthouse", namespace="u")] == [record.id]
        assert [hit.record.id for hit in second.search_image(noise_image(1), k=1, namespace="u/a")] == [record.id]
        second.delete(record.id)  # the file goes: nothing else references it
        assert first.count() == 0 and not any((memory_root / "images").rglob("*.png"))
        with pytest.raises(
            MemoryLockedError, match="already open in this process in shared mode; open it with shared=True too"
        ):
            ImageMemory.open(memory_root, image_embedder=tiny_image_embedder, client=chroma_server)
    # Both closed: the journals folder holds nothing, and a single-process open now works and finds it clean.
    assert list((memory_root / "journals").iterdir()) == []
    with ImageMemory.open(memory_root, image_embedder=tiny_image_embedder, client=chroma_server) as memory:
        assert memory.last_repair is not None and memory.last_repair.clean


def test_a_delete_and_an_add_of_the_same_picture_in_two_peers_never_lose_the_file(
    memory_root: Path, chroma_server: ChromaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two peers (separate write-lock descriptors exclude each other like two processes). The first deletes the
    # only record of a picture; right when it has decided the file is unreferenced, the second adds the same
    # picture. Without the cross-process write lock the add sees the file, keeps it, and the delete then removes
    # it under the new record.
    with _open_shared(memory_root, chroma_server) as first, _open_shared(memory_root, chroma_server) as second:
        old = first.add(noise_image(5), kind="input", namespace="race", prompt="old")
        real_check = first._hash_referenced
        race: dict[str, object] = {}

        def check_then_race(content_hash: str) -> bool:
            referenced = real_check(content_hash)
            adder = threading.Thread(
                target=lambda: race.setdefault("record", second.add(noise_image(5), kind="input", namespace="race"))
            )
            adder.start()
            adder.join(timeout=1.0)  # the second peer must wait for our write section to end
            race["finished_inside"], race["adder"] = not adder.is_alive(), adder
            return referenced

        monkeypatch.setattr(first, "_hash_referenced", check_then_race)
        first.delete(old.id)
        race["adder"].join(timeout=60)
        assert race["finished_inside"] is False
        new = race["record"]
        assert np.array_equal(np.asarray(second.load(new.id)), np.asarray(noise_image(5)))
        assert first.count("race") == 1


def test_single_and_shared_refuse_each_other_across_processes(memory_root: Path, chroma_server: ChromaServer) -> None:
    shared_holder = start_worker("hold", memory_root, str(chroma_server.port))
    try:
        assert shared_holder.stdout.readline().startswith("ready"), shared_holder.stderr.read()
        with pytest.raises(MemoryLockedError, match="open in shared mode by other processes; open it the same way"):
            ImageMemory.open(memory_root, image_embedder=tiny_image_embedder, client=chroma_server)
        with _open_shared(memory_root, chroma_server) as memory:  # a second shared process is welcome
            assert memory.count() == 0
    finally:
        shared_holder.communicate(timeout=30)  # closing its stdin lets it close the memory and exit
    single_holder = start_worker("hold", memory_root)
    try:
        ready = single_holder.stdout.readline().split()
        assert ready[:1] == ["ready"], single_holder.stderr.read()
        started = time.monotonic()
        with pytest.raises(MemoryLockedError, match=f"single-process mode by another process \\(pid {ready[1]}\\)"):
            _open_shared(memory_root, chroma_server)
        assert time.monotonic() - started < 5  # refused at once, not after the lock timeout
    finally:
        single_holder.send_signal(signal.SIGKILL)
        single_holder.communicate(timeout=30)


def test_two_processes_add_delete_and_recall_concurrently_with_nothing_lost(
    memory_root: Path, chroma_server: ChromaServer
) -> None:
    count = 24
    workers = {
        tag: start_worker("mix", memory_root, str(chroma_server.port), str(count), tag, other)
        for tag, other in (("alpha", "beta"), ("beta", "alpha"))
    }
    with _open_shared(memory_root, chroma_server) as memory:  # this process is a third peer, reading meanwhile
        try:
            for worker in workers.values():
                assert worker.stdout.readline().startswith("ready"), worker.stderr.read()
            for worker in workers.values():
                worker.stdin.write("go\n")
                worker.stdin.flush()
            seen_counts = []
            while any(worker.poll() is None for worker in workers.values()):
                seen_counts.append(memory.count("shared"))
                time.sleep(0.05)
            outputs = {tag: worker.communicate(timeout=120) for tag, worker in workers.items()}
        finally:
            for worker in workers.values():
                if worker.poll() is None:
                    worker.kill()
        for tag, (output, errors) in outputs.items():
            assert workers[tag].returncode == 0, errors
            assert "Error" not in errors and output.rstrip().endswith("done"), (output, errors)
        kept: dict[str, set[str]] = {}
        for tag, (output, _) in outputs.items():
            lines = [line.split() for line in output.splitlines()]
            added = [words[1] for words in lines if words[0] == "add"]
            deleted = {words[1] for words in lines if words[0] == "del"}
            assert len(added) == count + 2 * (count // 5) and len(deleted) == count // 3
            kept[tag] = set(added) - deleted
            assert max(int(words[1]) for words in lines if words[0] == "saw") > 0  # recalled the other's records
        assert max(seen_counts) > 0  # this process saw records while the workers were writing

        # Nothing lost, nothing extra: exactly the acknowledged, undeleted records, each with its file.
        for tag, ids in kept.items():
            found = {record.id for record in memory.find(namespace=f"shared/{tag}")}
            assert found == ids
            for image_id in ids:
                record = memory.get(image_id)
                assert np.asarray(memory.load(image_id)).shape == (record.height, record.width, 3)
        hits = memory.search_text("alpha", k=100, namespace="shared/alpha")
        assert {hit.record.id for hit in hits} == kept["alpha"]
    # Alone again: a single-process open sweeps the root and finds nothing to repair (no orphan file, no
    # record without its file, no journal left behind).
    with ImageMemory.open(memory_root, image_embedder=tiny_image_embedder, client=chroma_server) as memory:
        assert memory.last_repair is not None and memory.last_repair.clean, memory.last_repair
        assert memory.count() == len(kept["alpha"]) + len(kept["beta"])
        stored = {path.stem for path in (memory_root / "images").rglob("*.png")}
        assert stored == {memory.get(image_id).content_hash for ids in kept.values() for image_id in ids}


def test_a_live_peer_rolls_back_a_killed_writers_transaction_and_nothing_else(
    memory_root: Path, chroma_server: ChromaServer
) -> None:
    with _open_shared(memory_root, chroma_server) as memory:
        mine = memory.add(noise_image(3), kind="input", namespace="peer/mine", prompt="mine")
        writer = start_worker("batch", memory_root, str(chroma_server.port))
        try:
            lines = []
            while not any(line.startswith("embedded 4") for line in lines):  # part-way through one add_many
                line = writer.stdout.readline()
                assert line, writer.stderr.read()
                lines.append(line)
            writer.send_signal(signal.SIGKILL)
            writer.communicate(timeout=30)
        finally:
            if writer.poll() is None:
                writer.kill()
        kept_id = next(line.split()[1] for line in lines if line.startswith("kept"))
        assert memory.count("crash/batch") > 0  # the killed transaction's first batches are in chroma
        journals = list((memory_root / "journals").glob("*.jsonl"))
        assert len(journals) == 2  # ours and the dead writer's
        dead_journal = next(path for path in journals if str(writer.pid) in path.name)
        intents = [json.loads(line) for line in dead_journal.read_text().splitlines()]
        assert {entry["op"] for entry in intents} == {"add"} and all("hashes" in entry for entry in intents)

        report = memory.repair()  # not alone: only the dead writer's intents are undone
        assert report.rolled_back_adds > 0 and report.orphan_files > 0
        assert report.records_without_file == report.incomplete_records == 0  # no sweep while shared
        assert memory.count("crash/batch") == 0
        assert memory.get(kept_id).prompt == "kept" and memory.get(mine.id) == mine
        assert not dead_journal.exists() and not dead_journal.with_suffix(".alive").exists()
        assert memory.repair().clean  # idempotent
    with ImageMemory.open(memory_root, image_embedder=tiny_image_embedder, client=chroma_server) as memory:
        assert memory.last_repair is not None and memory.last_repair.clean, memory.last_repair
        assert memory.count() == 2


def test_the_first_shared_opener_repairs_what_a_dead_single_process_left(
    memory_root: Path, chroma_server: ChromaServer
) -> None:
    writer = start_worker("batch", memory_root)  # single-process mode, embedded chroma: a different store
    writer.communicate(timeout=120)
    # Journals of the single-process mode (root/journal.jsonl) and of dead shared writers are both read by the
    # first shared opener, which holds the root alone while it repairs.
    single_journal = memory_root / "journal.jsonl"
    single_journal.write_text(json.dumps({"op": "add", "ids": ["img_0123456789abcdef"], "txn": "t1"}) + "\n")
    dead = memory_root / "journals" / "gone-1-abc.jsonl"
    dead.parent.mkdir(exist_ok=True)
    dead.write_text(json.dumps({"op": "delete", "ids": ["img_fedcba9876543210"], "txn": "t2", "hashes": []}) + "\n")
    with _open_shared(memory_root, chroma_server) as memory:
        assert memory.last_repair is not None
        assert memory.last_repair.orphan_files > 0  # the embedded store's files have no record on this server
        assert single_journal.read_text() == "" and not dead.exists()
        assert memory.repair().clean


def test_chroma_addresses_parse_or_say_what_is_wrong() -> None:
    assert parse_chroma_address("127.0.0.1:8001") == ChromaServer(host="127.0.0.1", port=8001)
    assert parse_chroma_address("https://chroma.internal:443/team-a") == ChromaServer(
        host="chroma.internal", port=443, ssl=True, collection_prefix="team-a"
    )
    for bad in ("chroma.internal", ":8001", "host:port", "host:70000", "host:8001/../x"):
        with pytest.raises(InvalidMemoryRequestError, match="chroma server address"):
            parse_chroma_address(bad)


def test_the_runtime_opens_shared_when_seedx_chroma_is_set(
    memory_root: Path, chroma_server: ChromaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seedx_agent.graphs import runtime

    monkeypatch.setenv(
        runtime.CHROMA_ENV, f"{chroma_server.host}:{chroma_server.port}/{chroma_server.collection_prefix}"
    )
    engine = object()  # never asked: nothing is embedded here
    with runtime.open_memory(memory_root, engine) as first, runtime.open_memory(memory_root, engine) as second:
        assert first.shared and second.shared  # two opens of one folder, no MemoryLockedError
    monkeypatch.delenv(runtime.CHROMA_ENV)
    with runtime.open_memory(memory_root, engine) as memory:
        assert not memory.shared


def test_a_live_peer_removes_the_temp_file_of_a_writer_killed_inside_a_file_write(
    memory_root: Path, chroma_server: ChromaServer
) -> None:
    # Files are written before the journal intent, so a writer killed inside a file write leaves a temp file that
    # no intent names. Its registration (.alive, no longer locked) is what marks it dead.
    with _open_shared(memory_root, chroma_server) as first, _open_shared(memory_root, chroma_server) as second:
        record = first.add(noise_image(7), kind="input", namespace="u")
        shard = memory_root / "images" / record.content_hash[:2]
        temp = shard / f".{record.content_hash}.png.0badc0de.tmp"
        temp.write_bytes(b"half a picture")
        assert second.repair().clean and temp.exists()  # no dead writer: it may be a live writer's, left alone
        (memory_root / "journals" / "gone-4242-abc.alive").touch()
        report = second.repair()
        assert report.temp_files == 1 and not temp.exists()
        assert not (memory_root / "journals" / "gone-4242-abc.alive").exists()
        assert first.get(record.id) == record and first.load(record.id).size == (20, 12)
