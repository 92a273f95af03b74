"""Fixtures for the image-memory tests: a per-test network guard, a tiny image embedder, an open memory."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from memory_helpers import tiny_image_embedder
from seedx_agent.memory import ImageMemory


def _is_loopback(address: object) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX socket path
        return True
    host = address[0] if isinstance(address, tuple) else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Refuse non-loopback connections during each memory test and fail the test if any was tried."""
    attempts: list[object] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def guarded_connect(self: socket.socket, address: object) -> None:
        if not _is_loopback(address):
            attempts.append(address)
            raise OSError(f"network access to {address!r} is blocked in memory tests")
        return real_connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: object) -> int:
        if not _is_loopback(address):
            attempts.append(address)
            raise OSError(f"network access to {address!r} is blocked in memory tests")
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    yield attempts
    assert attempts == [], f"a memory test tried to reach the network: {attempts}"


@pytest.fixture
def memory_root(tmp_path: Path) -> Path:
    return tmp_path / "memory"


@pytest.fixture
def memory(memory_root: Path) -> Iterator[ImageMemory]:
    """An open ImageMemory with the tiny image embedder and the default offline text embedder."""
    opened = ImageMemory.open(memory_root, image_embedder=tiny_image_embedder)
    yield opened
    opened.close()
