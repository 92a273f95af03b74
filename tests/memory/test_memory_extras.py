"""The offline text embedder, concurrent use, the network guard, a chroma server backend, non-PIL inputs."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings
from memory_helpers import free_port, noise_image, solid_image, tiny_image_embedder
from seedx_agent.memory import (
    ChromaServer,
    EmbeddingMismatchError,
    HashingTextEmbeddings,
    ImageMemory,
    MemoryBackendError,
)


def test_hashing_embeddings_are_lexical_normalised_and_deterministic() -> None:
    embedder = HashingTextEmbeddings()
    assert isinstance(embedder, Embeddings)
    vectors = np.asarray(embedder.embed_documents(["A red car", "a red car", "red car a", "crimson automobile"]))
    assert vectors.shape == (4, 256) and vectors.dtype == np.float64  # lists of floats, as LangChain expects
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(vectors[0], vectors[1])  # case-insensitive
    assert 0.5 < vectors[0] @ vectors[2] < 0.999  # same words, different bigrams
    assert abs(vectors[0] @ vectors[3]) < 0.2  # no shared words: unrelated (it is lexical)
    assert embedder.embed_query("A red car") == embedder.embed_documents(["A red car"])[0]
    assert not np.any(embedder.embed_query("   "))  # blank text has no features
    assert np.linalg.norm(embedder.embed_query("?!")) == pytest.approx(1.0)  # punctuation still gets a feature
    assert len(HashingTextEmbeddings(dim=32).embed_query("x")) == 32
    with pytest.raises(EmbeddingMismatchError, match="dim must be an int >= 8"):
        HashingTextEmbeddings(dim=4)


def test_hashing_embeddings_are_the_same_in_another_process() -> None:
    code = (
        "import json; from seedx_agent.memory import HashingTextEmbeddings;"
        "print(json.dumps(HashingTextEmbeddings().embed_query('the ginger cat sleeps')))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(output) == HashingTextEmbeddings().embed_query("the ginger cat sleeps")


def test_parallel_adds_and_searches_from_threads(memory: ImageMemory) -> None:
    # LangGraph's ToolNode runs tool calls in parallel threads that share one memory.
    def work(worker: int) -> list[str]:
        ids = []
        for step in range(5):
            record = memory.add(noise_image(worker * 10 + step), kind="generated", namespace=f"t/{worker}")
            memory.search_image(record.id, k=2)
            ids.append(record.id)
        return ids

    with ThreadPoolExecutor(max_workers=4) as pool:
        all_ids = [image_id for ids in pool.map(work, range(4)) for image_id in ids]
    assert len(set(all_ids)) == 20 and memory.count() == 20
    assert all(memory.count(f"t/{worker}") == 5 for worker in range(4))
    assert memory.repair().clean


def test_the_network_guard_is_active(no_network: list[object]) -> None:
    with pytest.raises(OSError, match="blocked"):
        socket.create_connection(("192.0.2.1", 80), timeout=0.5)
    assert no_network == [("192.0.2.1", 80)]
    no_network.clear()  # the attempt above was ours; the fixture asserts nothing else tried


def test_chroma_server_backend(tmp_path: Path, chroma_server: ChromaServer) -> None:
    root = tmp_path / "files"
    with ImageMemory.open(root, image_embedder=tiny_image_embedder, client=chroma_server) as memory:
        record = memory.add(solid_image((250, 0, 0)), kind="input", namespace="u", prompt="red square on a server")
        assert memory.search_text("red square", k=1)[0].record == record
        assert memory.search_image(solid_image((250, 5, 5)), k=1)[0].record == record
    assert not (root / "chroma").exists()  # vectors and records live on the server; files stay in the root
    with ImageMemory.open(root, image_embedder=tiny_image_embedder, client=chroma_server.model_dump()) as memory:
        assert memory.get(record.id) == record
        assert np.array_equal(np.asarray(memory.load(record.id)), np.asarray(solid_image((250, 0, 0))))


def test_unreachable_chroma_server(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(MemoryBackendError, match=f"could not reach the chroma server at http://127.0.0.1:{port}"):
        ImageMemory.open(tmp_path, image_embedder=tiny_image_embedder, client=ChromaServer(host="127.0.0.1", port=port))
    with ImageMemory.open(tmp_path, image_embedder=tiny_image_embedder) as memory:  # the lock was released
        assert memory.count() == 0


def test_encoded_images_go_through_the_core_loader(memory: ImageMemory) -> None:
    image = noise_image(11)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    from_bytes = memory.add(buffer.getvalue(), kind="input", namespace="u")
    from_pil = memory.add(image, kind="input", namespace="u")
    assert from_bytes.content_hash == from_pil.content_hash
    assert np.array_equal(np.asarray(memory.load(from_bytes.id)), np.asarray(image))
