"""A real chroma server for tests (``chroma run`` on a free loopback port), shared by the memory and serving tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


@contextmanager
def running_chroma(folder: Path, *, prefix: str = "test-root") -> Iterator[Any]:
    """A real ``chroma run`` server on a free loopback port, storing under ``folder``; yields its ``ChromaServer``
    settings and stops it on exit (skips the test where the chroma CLI is not installed)."""
    from seedx_agent.memory import ChromaServer

    executable = shutil.which("chroma", path=str(Path(sys.executable).parent))
    if executable is None:
        pytest.skip("the chroma CLI is not installed next to this Python")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [executable, "run", "--path", str(folder / "server"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "ANONYMIZED_TELEMETRY": "False", "HOME": str(folder)},
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("chroma server did not start within 20 s")
        yield ChromaServer(host="127.0.0.1", port=port, collection_prefix=prefix)
    finally:
        server.terminate()
        server.wait(timeout=10)
