"""Test-wide settings: offline, deterministic, and no socket to anything but loopback."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chroma_helpers import running_chroma

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
NETWORK_ATTEMPTS: list[object] = []


def _is_loopback(address: object) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: object) -> None:
    if not _is_loopback(address):
        NETWORK_ATTEMPTS.append(address)
        raise OSError(f"network access to {address!r} is blocked in tests")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    if not _is_loopback(address):
        NETWORK_ATTEMPTS.append(address)
        raise OSError(f"network access to {address!r} is blocked in tests")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True, scope="session")
def _no_network() -> None:
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _real_connect_ex  # type: ignore[method-assign]
    assert not NETWORK_ATTEMPTS, f"tests tried to reach the network: {NETWORK_ATTEMPTS}"


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def memory(engine, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """An ``ImageMemory`` over the module's ``engine`` fixture (ViT embeddings), in a fresh folder per module.

    Modules that use it define ``engine``; ``tests/memory`` and the story/slides tests define their own."""
    from seedx_agent.memory import ImageMemory
    from seedx_agent.tools import memory_image_embedder

    root = tmp_path_factory.mktemp("memory") / "memory"
    with ImageMemory.open(root, image_embedder=memory_image_embedder(engine)) as opened:
        yield opened


@pytest.fixture(scope="module")
def tiny_lvlm():  # type: ignore[no-untyped-def]
    """(lvlm, token ids, tokenizer): a seeded ``tiny-random`` SeedXLVLM in eval mode, fresh per module."""
    import torch

    from seedx_agent.config import SeedXConfig
    from seedx_agent.pipeline.lvlm import SeedXLVLM
    from seedx_agent.pipeline.tokenizer import SeedXTokenizer
    from seedx_agent.pipeline.tokens import TokenIds

    config = SeedXConfig.from_preset("tiny-random")
    torch.manual_seed(0)
    lvlm = SeedXLVLM(config.llm, config.lvlm).eval()
    tokenizer = SeedXTokenizer.tiny()
    return lvlm, TokenIds.from_vocab(tokenizer, config.lvlm.num_image_tokens), tokenizer


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[Any]:
    """A real chroma server on loopback for one test (``running_chroma``)."""
    with running_chroma(tmp_path) as server:
        yield server
