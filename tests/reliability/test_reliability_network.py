"""The test-wide network guard is really active, and the image memory's chroma client has telemetry off."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from seedx_agent.memory import ImageMemory

NON_LOOPBACK = ("203.0.113.7", 443)  # TEST-NET-3: never routed, so nothing is reached even without the guard


@pytest.fixture
def guard_log() -> list[object]:
    """The guard's attempt log (tests/conftest.py); our deliberate attempts are removed so the session passes."""
    log = socket.socket.connect.__globals__["NETWORK_ATTEMPTS"]
    before = len(log)
    yield log
    del log[before:]


def test_non_loopback_connect_is_blocked(guard_log: list[object]) -> None:
    assert socket.socket.connect.__name__ == "_guarded_connect"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(OSError, match="blocked in tests"):
            sock.connect(NON_LOOPBACK)
    finally:
        sock.close()
    assert guard_log[-1] == NON_LOOPBACK
    with pytest.raises(OSError, match="blocked in tests"):
        socket.create_connection(NON_LOOPBACK, timeout=1)


def test_non_loopback_connect_ex_is_blocked(guard_log: list[object]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(OSError, match="blocked in tests"):
            sock.connect_ex(NON_LOOPBACK)
    finally:
        sock.close()


def test_loopback_stays_allowed() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        client = socket.create_connection(server.getsockname(), timeout=5)
        client.close()
    finally:
        server.close()


def test_image_memory_chroma_telemetry_is_off(tmp_path: Path) -> None:
    with ImageMemory.open(tmp_path / "memory", image_embedder=lambda images: [[1.0, 0.0]] * len(images)) as memory:
        settings = memory._client.get_settings()
        assert settings.anonymized_telemetry is False
        assert settings.allow_reset is False
