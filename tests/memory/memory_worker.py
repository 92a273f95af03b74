"""Subprocess side of the memory's lock and crash tests (run as ``python memory_worker.py MODE ROOT [PORT ...]``).

With PORT the memory is opened in shared mode on the chroma server at 127.0.0.1:PORT (prefix ``test-root``).

Modes:
  hold      open the memory, print ``ready <pid>``, keep it open until stdin closes.
  try-open  try to open the memory; print ``locked <message>`` (exit 0) or ``opened`` (exit 1).
  ingest    open, print ``ready``, then add and delete images forever, printing ``add <n> <id>`` after each
            add returns, ``deleting <id>`` before and ``del <id>`` after each delete (the parent SIGKILLs it
            at a random time).
  batch     open, add one image (``kept <id>``), then store BATCH_IMAGES images in ONE ``add_many`` call of batches
            of BATCH_SIZE, printing ``embedded <n>`` after each batch's embedder call (which sleeps a little, so the
            parent can SIGKILL the call part-way) and ``done <count>`` once the call returned.
  mix       (shared) wait for a line on stdin, then COUNT times: add (every 5th step an ``add_many`` of 3) one of 4
            contents, so both workers' records share files, printing ``add <id>``; every 3rd step delete our oldest
            record (``del <id>``) and look for TAG_OTHER's records by text (``saw <n>``). ``done`` at the end.
            Arguments after PORT: COUNT TAG TAG_OTHER.
Every non-loopback connection attempt is reported as a ``network <address>`` line and refused.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import time

from memory_helpers import noise_image, tiny_image_embedder
from seedx_agent.memory import ChromaServer, ImageMemory, MemoryLockedError

DISTINCT_CONTENTS = 5  # image n has the pixels of noise_image(n % 5): records share files
BATCH_IMAGES, BATCH_SIZE, BATCH_NAMESPACE = 200, 16, "crash/batch"


def _guard_network() -> None:
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host != "localhost":
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                print(f"network {address!r}", flush=True)
                raise OSError("network blocked in memory worker")
        return real_connect(self, address)

    socket.socket.connect = guarded  # type: ignore[method-assign]


PORT: int | None = None  # set by main() from argv (the tests also import this module for its constants)


def _open(root: str, embedder: object = tiny_image_embedder) -> ImageMemory:
    if PORT is None:
        return ImageMemory.open(root, image_embedder=embedder)
    server = ChromaServer(host="127.0.0.1", port=PORT, collection_prefix="test-root")
    return ImageMemory.open(root, image_embedder=embedder, client=server, shared=True)


def main() -> int:
    global PORT
    _guard_network()
    mode, root = sys.argv[1], sys.argv[2]
    PORT = int(sys.argv[3]) if len(sys.argv) > 3 else None
    if mode == "mix":
        return _mix(root, int(sys.argv[4]), sys.argv[5], sys.argv[6])
    if mode == "try-open":
        try:
            memory = _open(root)
        except MemoryLockedError as error:
            print(f"locked {error}", flush=True)
            return 0
        memory.close()
        print("opened", flush=True)
        return 1
    if mode == "batch":
        return _batch(root)
    memory = _open(root)
    print(f"ready {os.getpid()}", flush=True)
    if mode == "hold":
        sys.stdin.read()
        memory.close()
        return 0
    live: list[str] = []
    number = 0
    for step in range(100_000):
        if step % 3 == 2:
            numbers = list(range(number, number + 3))
            records = memory.add_many(
                [noise_image(n % DISTINCT_CONTENTS) for n in numbers],
                kind="generated",
                namespace="crash/test",
                prompts=[f"item {n}" for n in numbers],
                batch_size=2,
                progress=False,
            )
        else:
            numbers = [number]
            records = [
                memory.add(
                    noise_image(number % DISTINCT_CONTENTS),
                    kind="input",
                    namespace="crash/test",
                    prompt=f"item {number}",
                )
            ]
        for n, record in zip(numbers, records):
            print(f"add {n} {record.id}", flush=True)
            live.append(record.id)
        number += len(numbers)
        if step % 4 == 3:
            victim = live.pop(0)
            print(f"deleting {victim}", flush=True)
            memory.delete(victim)
            print(f"del {victim}", flush=True)
    return 0


def _batch(root: str) -> int:
    calls: list[int] = []  # embedder calls of the add_many (the single add before it is not counted)

    def slow_embedder(images: list) -> object:
        vectors = tiny_image_embedder(images)
        if kept is not None:
            time.sleep(0.05)
            calls.append(len(images))
            print(f"embedded {len(calls)}", flush=True)
        return vectors

    kept = None
    memory = _open(root, slow_embedder)
    print(f"ready {os.getpid()}", flush=True)
    kept = memory.add(noise_image(10_000), kind="input", namespace="crash/kept", prompt="kept")
    print(f"kept {kept.id}", flush=True)
    # Image n is noise_image(n % 150): most files are new, the last 50 records share files with earlier ones.
    records = memory.add_many(
        [noise_image(n % 150) for n in range(BATCH_IMAGES)],
        kind="generated",
        namespace=BATCH_NAMESPACE,
        prompts=[f"batch item {n}" for n in range(BATCH_IMAGES)],
        batch_size=BATCH_SIZE,
        progress=False,
    )
    print(f"done {len(records)}", flush=True)
    memory.close()
    return 0


def _mix(root: str, count: int, tag: str, other: str) -> int:
    memory = _open(root)
    print(f"ready {os.getpid()}", flush=True)
    sys.stdin.readline()  # start together with the other worker
    live: list[str] = []
    for step in range(count):
        if step % 5 == 4:
            records = memory.add_many(
                [noise_image(n % 4) for n in range(step, step + 3)],
                kind="generated",
                namespace=f"shared/{tag}",
                prompts=[f"{tag} picture {step} {n}" for n in range(3)],
                batch_size=2,
                progress=False,
            )
        else:
            records = [
                memory.add(noise_image(step % 4), kind="input", namespace=f"shared/{tag}", prompt=f"{tag} {step}")
            ]
        for record in records:
            print(f"add {record.id}", flush=True)
            live.append(record.id)
        if step % 3 == 2:
            victim = live.pop(0)
            memory.delete(victim)
            print(f"del {victim}", flush=True)
            print(f"saw {len(memory.search_text(other, k=50, namespace=f'shared/{other}'))}", flush=True)
    memory.close()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
