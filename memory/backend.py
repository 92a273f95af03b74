"""The chroma side of the memory: client construction (embedded or server) and collection helpers.

Collections are always created with ``embedding_function=None`` and filled with explicit embeddings only:
chroma's default embedding function would download an ONNX model, and text-only queries/adds would fall
back to it, so the memory never passes ``query_texts`` or documents without embeddings. Telemetry is off.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import InvalidMemoryRequestError, MemoryBackendError

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

__all__ = ["ChromaServer", "ClientChoice", "open_chroma_client", "parse_chroma_address"]

logger = logging.getLogger(__name__)

PAGE_SIZE = 2000  # chroma's largest batch is ~5461 records; stay well below for gets and adds


class ChromaServer(BaseModel):
    """Connection settings for a chroma server (``chromadb.HttpClient``) instead of the embedded store.

    Image files, the journal and the lock stay in the memory root; only the vectors and metadata live on
    the server. Give every memory root its own ``collection_prefix`` when several share one server.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "localhost"
    port: int = Field(default=8000, ge=1, le=65535)
    ssl: bool = False
    headers: dict[str, str] = Field(default_factory=dict)
    tenant: str = "default_tenant"
    database: str = "default_database"
    collection_prefix: str = Field(default="seedx", pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,60}$")


ClientChoice = Literal["persistent"] | ChromaServer


def parse_chroma_address(text: str) -> ChromaServer:
    """``ChromaServer`` settings from ``"HOST:PORT"`` or ``"HOST:PORT/PREFIX"`` (the ``SEEDX_CHROMA`` variable and the
    ``--chroma`` flags); ``http://`` / ``https://`` in front are accepted."""
    address = text.strip()
    ssl = address.startswith("https://")
    address = address.removeprefix("https://").removeprefix("http://")
    location, _, prefix = address.partition("/")
    host, _, port = location.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidMemoryRequestError(
            f"chroma server address {text!r} is not HOST:PORT (optionally HOST:PORT/COLLECTION_PREFIX), e.g. "
            "127.0.0.1:8001"
        )
    try:
        return ChromaServer(host=host, port=int(port), ssl=ssl, **({"collection_prefix": prefix} if prefix else {}))
    except Exception as error:
        raise InvalidMemoryRequestError(f"chroma server address {text!r}: {error}") from error


def _settings() -> Any:
    from chromadb.config import Settings

    # One settings object shape per path: chroma refuses a second client on a path with different settings.
    return Settings(anonymized_telemetry=False, allow_reset=False)


def open_chroma_client(root: Path, client: object) -> tuple[ClientAPI, str]:
    """Open the chroma client for ``root`` and return it with the collection-name prefix to use."""
    import chromadb

    if client == "persistent":
        try:
            return chromadb.PersistentClient(path=str(root / "chroma"), settings=_settings()), "seedx"
        except Exception as error:  # chroma raises a variety of types for a corrupt/foreign directory
            raise MemoryBackendError(
                f"could not open the chroma store in {root / 'chroma'}: {error}; if the folder was written by an "
                "incompatible chroma version, move it away and re-ingest the images"
            ) from error
    if isinstance(client, dict):
        try:
            client = ChromaServer.model_validate(client)
        except Exception as error:
            raise InvalidMemoryRequestError(f"invalid chroma server settings {client!r}: {error}") from error
    if not isinstance(client, ChromaServer):
        raise InvalidMemoryRequestError(
            f"client must be 'persistent' or ChromaServer(host=..., port=...) settings, got {client!r}"
        )
    try:
        http_client = chromadb.HttpClient(
            host=client.host,
            port=client.port,
            ssl=client.ssl,
            headers=dict(client.headers),
            settings=_settings(),
            tenant=client.tenant,
            database=client.database,
        )
        http_client.heartbeat()
    except Exception as error:
        scheme = "https" if client.ssl else "http"
        raise MemoryBackendError(
            f"could not reach the chroma server at {scheme}://{client.host}:{client.port}: {error}; start it "
            "(`chroma run --path DIR --port PORT`) or use client='persistent'"
        ) from error
    return http_client, client.collection_prefix


def open_collection(client: ClientAPI, name: str) -> Collection:
    """Get or create a cosine-space collection that only ever receives explicit embeddings."""
    return client.get_or_create_collection(name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}})


def iter_metadata(collection: Collection, where: dict[str, Any] | None = None) -> Iterator[tuple[str, dict]]:
    """Every (id, metadata) of ``collection`` matching ``where``, fetched page by page."""
    offset = 0
    while True:
        page = collection.get(where=where, limit=PAGE_SIZE, offset=offset, include=["metadatas"])
        ids = page["ids"]
        metadatas = page["metadatas"] or [{}] * len(ids)
        yield from zip(ids, metadatas)
        if len(ids) < PAGE_SIZE:
            return
        offset += PAGE_SIZE


def iter_ids(collection: Collection, where: dict[str, Any] | None = None) -> Iterator[str]:
    """Every id of ``collection`` matching ``where``, fetched page by page."""
    offset = 0
    while True:
        ids = collection.get(where=where, limit=PAGE_SIZE, offset=offset, include=[])["ids"]
        yield from ids
        if len(ids) < PAGE_SIZE:
            return
        offset += PAGE_SIZE


def delete_ids(collection: Collection, ids: list[str]) -> None:
    """Delete ``ids`` (missing ones are ignored by chroma) in pages."""
    for start in range(0, len(ids), PAGE_SIZE):
        collection.delete(ids=ids[start : start + PAGE_SIZE])
