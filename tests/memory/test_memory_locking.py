"""A memory root has one owner at a time: a second open, here or in another process, is refused."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from memory_helpers import solid_image, start_worker, tiny_image_embedder
from seedx_agent.memory import ImageMemory, MemoryLockedError


def test_second_open_in_the_same_process_is_refused(memory: ImageMemory, memory_root: Path) -> None:
    with pytest.raises(MemoryLockedError, match="already open in this process") as caught:
        ImageMemory.open(memory_root, image_embedder=tiny_image_embedder)
    assert str(memory_root) in str(caught.value) and "close()" in str(caught.value)
    assert caught.value.root == memory_root
    # The refused open changed nothing: the first memory keeps working, and a different root opens fine.
    record = memory.add(solid_image((4, 4, 4)), kind="input", namespace="u")
    with ImageMemory.open(memory_root.parent / "other", image_embedder=tiny_image_embedder) as other:
        assert other.count() == 0
    memory.close()
    with ImageMemory.open(memory_root, image_embedder=tiny_image_embedder) as reopened:
        assert reopened.get(record.id) == record


def test_second_open_from_another_process_is_refused_until_it_dies(memory_root: Path) -> None:
    worker = start_worker("hold", memory_root)
    try:
        ready = worker.stdout.readline().split()
        assert ready[:1] == ["ready"], worker.stderr.read()
        with pytest.raises(MemoryLockedError, match="in use by another process") as caught:
            ImageMemory.open(memory_root, image_embedder=tiny_image_embedder)
        assert str(memory_root) in str(caught.value) and f"pid {ready[1]}" in str(caught.value)
    finally:
        worker.send_signal(signal.SIGKILL)  # no clean close: the OS releases the lock with the process
        worker.communicate(timeout=30)
    with ImageMemory.open(memory_root, image_embedder=tiny_image_embedder) as memory:
        assert memory.count() == 0


def test_another_process_is_refused_while_we_hold_the_root(memory: ImageMemory, memory_root: Path) -> None:
    worker = start_worker("try-open", memory_root)
    output, errors = worker.communicate(timeout=60)
    assert worker.returncode == 0, errors
    assert output.startswith("locked ") and "in use by another process" in output and str(memory_root) in output
    assert "network" not in output


def test_a_memory_dropped_without_close_gives_the_root_back(memory_root: Path) -> None:
    import gc

    forgotten = ImageMemory.open(memory_root, image_embedder=tiny_image_embedder)
    record = forgotten.add(solid_image((8, 8, 8)), kind="input", namespace="u")
    del forgotten
    gc.collect()
    with ImageMemory.open(memory_root, image_embedder=tiny_image_embedder) as memory:
        assert memory.get(record.id) == record
