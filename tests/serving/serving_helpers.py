"""Helpers of the serving tests (imported by name: pytest puts this folder on sys.path): a free loopback port,
a server subprocess that is always stopped, readiness."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

# Environment of every server the tests start: offline, no tracing, no analytics or version checks.
QUIET_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "LANGGRAPH_NO_VERSION_CHECK": "true",
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
}
_SECRETS = ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGGRAPH_CLOUD_LICENSE_KEY", "OPENAI_API_KEY")


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _SECRETS}
    env.update(QUIET_ENV)
    env.update(extra)
    return env


def log_tail(path: Path, chars: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 240.0) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log when it exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with code {process.returncode} before it was ready:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"the server did not answer {url} within {timeout:.0f} s:\n{log_tail(log)}")


@contextlib.contextmanager
def running(command: list[str], *, env: dict[str, str], cwd: Path, log: Path, ready_url: str) -> Iterator[None]:
    """Start ``command`` (output to ``log``), wait for ``ready_url``, and always stop that process again."""
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT)
        try:
            wait_ready(ready_url, process, log)
            yield
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=20)
