"""``ImageMemory``: the agent's image store — files on disk, records and embeddings in chroma.

Images are stored once, content-addressed by the sha256 of their canonical PNG bytes, and referred to by
opaque random ids (``img_`` + 16 hex). A record keeps provenance (kind, prompt, caption, seed, model),
edit lineage (parent id, operation) and a namespace such as ``"user:alice/thread:1/story:x"``.

Two chroma collections back the search: visual embeddings (from the caller's image embedder, the SEED-X
ViT in the product) and text embeddings of prompt + caption (any LangChain ``Embeddings``; the offline
default is ``HashingTextEmbeddings``).

Crash safety. Every write follows one order — image file, then a journal intent, then the chroma records,
then the transaction commits in the journal — and ``repair()`` (run on every open) restores the invariant
"every record has its file, every file has a record": uncommitted adds are rolled back (their ids were never
returned to a caller, so nobody can refer to them), unfinished deletes are finished, records without a file and
files without a record are removed. One ``add_many`` call is one transaction, however many batches it writes:
it commits after its last batch, so a failure or a crash part-way leaves none of its records. A second open of
the same root, from this or another process, is refused with ``MemoryLockedError`` while the first is open, unless
every opener uses shared mode (``shared=True`` on a chroma server; module ``shared``).

Search. Scores are cosine similarities; text-search hits below the relevance floor ``min_text_score``
(``DEFAULT_MIN_TEXT_SCORE``) are dropped, and image-search hits below ``min_image_score`` (off by default).
A namespace filter is answered through an in-process namespace index (``namespace_index``) and a cache of the
namespace's unit vectors (``vector_cache``: one exact scan) instead of chroma's metadata filter, whose cost grows with
the number of matching records.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
from langchain_core.embeddings import Embeddings
from PIL import Image
from pydantic import ValidationError
from tqdm.auto import tqdm

from seedx_agent.pipeline.images import DEFAULT_MAX_PIXELS, check_image_size

from .backend import (
    PAGE_SIZE,
    ChromaServer,
    delete_ids,
    iter_ids,
    iter_metadata,
    open_chroma_client,
    open_collection,
)
from .embedders import HashingTextEmbeddings, ImageEmbedder, check_embeddings, unit_rows
from .errors import (
    EmbeddingMismatchError,
    ImageMemoryError,
    InvalidMemoryRequestError,
    MemoryClosedError,
    UnknownImageError,
)
from .files import CanonicalImage, ContentStore, Journal, RootLock, atomic_write_bytes, canonical_image
from .namespace_index import NamespaceIndex, Which, in_namespace
from .records import (
    IMAGE_KINDS,
    ImageHit,
    ImageRecord,
    RepairReport,
    combine_where,
    namespace_clause,
    new_image_id,
    utc_now_ms,
    validate_image_id,
    validate_namespace,
    validate_text,
    validate_where,
)
from .shared import DEFAULT_LOCK_TIMEOUT, JOURNALS, PeerJournals, ProcessWriteLock, dead_journals, forget
from .vector_cache import DEFAULT_VECTOR_CACHE_BYTES, CachedVectors, VectorCache

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_IMAGE_SCORE",
    "DEFAULT_MIN_TEXT_SCORE",
    "DEFAULT_VECTOR_CACHE_BYTES",
    "ImageInput",
    "ImageMemory",
]

logger = logging.getLogger(__name__)

DEFAULT_MIN_TEXT_SCORE = 0.1
"""Relevance floor of ``search_text``: hits with a cosine score below it are dropped.

Cosine 0 means "nothing in common" (for the default ``HashingTextEmbeddings``: no shared word), so without a floor a
query like ``../../etc/passwd`` "matched" every stored image at 0.00. 0.1 keeps any real overlap (one shared word
of a short caption scores about 0.3). Set another floor with ``ImageMemory.open(min_text_score=...)`` or per call
(``search_text(..., min_score=...)``; -1 keeps every hit)."""
DEFAULT_MIN_IMAGE_SCORE = -1.0
"""Relevance floor of ``search_image``: off by default, since "the most similar stored pictures" is always a
meaningful answer to a picture; set one with ``ImageMemory.open(min_image_score=...)`` or per call."""
MAX_RESULTS = 1000
# Namespace-filtered search (``ImageMemory._search``): a namespace of at most VECTOR_CACHE_MAX_ROWS entries that
# fits the vector cache's budget is scored exactly against its cached unit vectors (one einsum: ~0.1 ms per 1000
# 512-d rows, so ~2 ms at the cap; filling it reads the vectors from chroma once, ~0.06 ms each). Without the cache
# (budget 0, or over the cap) a namespace of at most EXACT_SCAN_MAX entries is scanned exactly from chroma's stored
# vectors (beyond ~64 chroma's filter is as fast); a larger one is over-fetched unfiltered,
# n = (k / its share) * OVERFETCH_FACTOR + OVERFETCH_SLACK, as long as n <= OVERFETCH_MAX (a share of about 5 % for
# k=5); otherwise chroma's metadata filter answers.
VECTOR_CACHE_MAX_ROWS = 20_000
EXACT_SCAN_MAX = 64
OVERFETCH_FACTOR = 2.0
OVERFETCH_SLACK = 16
OVERFETCH_MAX = 256
MAX_LINEAGE_DEPTH = 10_000
FORMAT_VERSION = 1
SINGLE_JOURNAL = "journal.jsonl"  # single-process mode; shared mode journals per process under journals/

ImageInput = Any
"""A PIL image, or any source ``seedx_agent.pipeline.images.load_image`` accepts (bytes, data URL, path on the
*caller's* side, e.g. a CLI argument). Never a memory id: those are looked up with ``load``."""


class ImageMemory:
    """Content-addressed image store with records, lineage, namespaces and vector search (see module doc).

    Open it with ``ImageMemory.open(root, image_embedder=...)``; it is a context manager and thread-safe
    (writes are serialised, so tools running in parallel threads can share one instance).
    """

    def __init__(
        self,
        *,
        root: Path,
        lock: RootLock,
        client: ClientAPI,
        collection_prefix: str,
        image_embedder: ImageEmbedder,
        text_embedder: Embeddings,
        max_pixels: int,
        min_text_score: float = DEFAULT_MIN_TEXT_SCORE,
        min_image_score: float = DEFAULT_MIN_IMAGE_SCORE,
        vector_cache_bytes: int = DEFAULT_VECTOR_CACHE_BYTES,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        """Internal: use ``ImageMemory.open``, which takes the lock and repairs the root first."""
        self.root = root
        self.shared = lock.shared
        """True in shared mode (several processes on this root and one chroma server; module ``memory.shared``)."""
        self.max_pixels = max_pixels
        self.min_text_score = min_text_score
        self.min_image_score = min_image_score
        self.namespace_fast_path = not self.shared
        """Namespace-filtered searches use the namespace index (fast); False always asks chroma's metadata filter,
        the reference path (the benchmark and the tests compare the two). Always off in shared mode: this process's
        index and cache would not see the other processes' writes."""
        self._index = NamespaceIndex()
        self.vector_cache = VectorCache(0 if self.shared else vector_cache_bytes)
        """Unit vectors of the namespaces searched lately (module ``vector_cache``); ``vector_cache.max_bytes``
        bounds it (settable; 0 turns it off)."""
        self.image_embedder = image_embedder
        self.text_embedder = text_embedder
        self.last_repair: RepairReport | None = None
        self._lock = lock
        self._client: ClientAPI | None = client
        self._visual: Collection = open_collection(client, f"{collection_prefix}_images_visual")
        self._text: Collection = open_collection(client, f"{collection_prefix}_images_text")
        self._files = ContentStore(root / "images")
        self._peers = PeerJournals(root) if self.shared else None
        self._journal = Journal(self._peers.journal_path if self._peers else root / SINGLE_JOURNAL)
        self._manifest_path = root / "memory.json"
        self._manifest = self._load_manifest()
        # Serialises writes: between this process's threads, and in shared mode between processes (root/.write.lock).
        self._write_lock = ProcessWriteLock(root if self.shared else None, timeout=lock_timeout)
        self._close_callbacks: list[Callable[[], None]] = []
        # A memory dropped without close() still gives its root back when it is garbage-collected.
        self._finalizer = weakref.finalize(self, _release_quietly, client, lock, self._peers)

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    def open(
        cls,
        root: str | Path,
        *,
        image_embedder: ImageEmbedder,
        text_embedder: Embeddings | None = None,
        client: str | ChromaServer | dict[str, Any] = "persistent",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_text_score: float = DEFAULT_MIN_TEXT_SCORE,
        min_image_score: float = DEFAULT_MIN_IMAGE_SCORE,
        vector_cache_bytes: int = DEFAULT_VECTOR_CACHE_BYTES,
        shared: bool = False,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> ImageMemory:
        """Open (creating if needed) the memory at ``root``, lock it, and repair any crash damage.

        ``image_embedder`` maps a list of RGB images to an (n, dim) array (the tools layer passes SEED-X ViT
        features); ``text_embedder`` defaults to the offline, lexical ``HashingTextEmbeddings``;
        ``client`` is ``"persistent"`` (chroma embedded under ``root/chroma``) or ``ChromaServer`` settings;
        ``min_text_score`` / ``min_image_score`` are the relevance floors of ``search_text`` / ``search_image``
        (cosine similarities in [-1, 1]; ``DEFAULT_MIN_TEXT_SCORE``, ``DEFAULT_MIN_IMAGE_SCORE``);
        ``vector_cache_bytes`` bounds the in-process cache of namespace vectors that answers namespace-filtered
        searches (``DEFAULT_VECTOR_CACHE_BYTES``, 256 MiB; 0 turns it off).

        ``shared=True`` lets several processes (Ray replicas, server workers) open the same ``root`` at once, with
        the records on one chroma server (``client=ChromaServer(...)``, required) and the image files in ``root``,
        a folder they all reach (module ``memory.shared``). Writes are then serialised across processes, each
        process repairs only what dead processes left half-done, and namespace searches ask chroma's filter (the
        in-process namespace index and vector cache are off). ``lock_timeout`` bounds the wait for the write lock.
        """
        if not callable(image_embedder):
            raise InvalidMemoryRequestError(
                f"image_embedder must be a callable list[PIL.Image] -> (n, dim) array, got {image_embedder!r}"
            )
        if text_embedder is None:
            text_embedder = HashingTextEmbeddings()
        elif not isinstance(text_embedder, Embeddings):
            raise InvalidMemoryRequestError(
                f"text_embedder must be a langchain_core.embeddings.Embeddings, got {type(text_embedder).__name__}"
            )
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
            raise InvalidMemoryRequestError(f"max_pixels must be a positive int, got {max_pixels!r}")
        min_text_score = _check_min_score(min_text_score, "min_text_score")
        min_image_score = _check_min_score(min_image_score, "min_image_score")
        VectorCache(vector_cache_bytes)  # checks it before anything is locked
        if not isinstance(shared, bool):
            raise InvalidMemoryRequestError(f"shared must be True or False, got {shared!r}")
        if shared and client == "persistent":
            raise InvalidMemoryRequestError(
                "shared=True needs a chroma server every process reaches: pass client=ChromaServer(host=..., "
                "port=...) (start one with `chroma run --path DIR --port PORT`); the embedded store is single-process"
            )
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) or not lock_timeout > 0:
            raise InvalidMemoryRequestError(f"lock_timeout must be a positive number of seconds, got {lock_timeout!r}")
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise InvalidMemoryRequestError(f"memory root {root} exists and is not a directory; pick a folder path")
        root.mkdir(parents=True, exist_ok=True)
        lock = RootLock(root, shared=shared, timeout=float(lock_timeout))
        lock.acquire()
        chroma_client = None
        memory = None
        try:
            chroma_client, prefix = open_chroma_client(root, client)
            memory = cls(
                root=root,
                lock=lock,
                client=chroma_client,
                collection_prefix=prefix,
                image_embedder=image_embedder,
                text_embedder=text_embedder,
                max_pixels=max_pixels,
                min_text_score=min_text_score,
                min_image_score=min_image_score,
                vector_cache_bytes=vector_cache_bytes,
                lock_timeout=float(lock_timeout),
            )
            memory.last_repair = memory.repair()
            lock.share()  # shared mode, first opener: the root is repaired, let the other processes in
        except BaseException:
            if memory is not None:
                memory._finalizer.detach()
                if memory._peers is not None:
                    memory._peers.close()
            if chroma_client is not None:
                chroma_client.close()
            lock.release()
            raise
        return memory

    @property
    def closed(self) -> bool:
        """True after ``close()``."""
        return self._client is None

    def close(self) -> None:
        """Release the chroma client and the root lock (idempotent); later calls raise ``MemoryClosedError``."""
        with self._write_lock:
            if self._client is None:
                return
            for callback in reversed(self._close_callbacks):
                try:
                    callback()
                except Exception:
                    logger.exception("error while closing an attachment of the image memory at %s", self.root)
            self._close_callbacks.clear()
            client, self._client = self._client, None
            self.vector_cache.clear()
            self._finalizer.detach()
            try:
                client.close()
            finally:
                if self._peers is not None:
                    self._peers.close()
                self._lock.release()

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` when the memory closes (used by adapters that keep their own handles in the root)."""
        self._close_callbacks.append(callback)

    def __enter__(self) -> ImageMemory:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._client is None:
            raise MemoryClosedError(f"the image memory at {self.root} is closed; open it again with ImageMemory.open")

    # ------------------------------------------------------------------ manifest (embedding dimensions)

    def _load_manifest(self) -> dict[str, Any]:
        if not self._manifest_path.is_file():
            manifest = {"format_version": FORMAT_VERSION, "image_dim": None, "text_dim": None}
            atomic_write_bytes(self._manifest_path, json.dumps(manifest, indent=2).encode("utf-8"))
            return manifest
        try:
            manifest = json.loads(self._manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ImageMemoryError(
                f"{self._manifest_path} is unreadable ({error}); restore it or delete it (the dimensions are "
                "re-learnt from the next add)"
            ) from error
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ImageMemoryError(
                f"{self._manifest_path} has format_version {manifest.get('format_version')!r}; this version of "
                f"seedx-agent reads format {FORMAT_VERSION}: upgrade seedx-agent or use a new root"
            )
        return manifest

    def _remember_dim(self, key: str, dim: int) -> None:
        if self._manifest.get(key) is not None:
            return
        with self._write_lock:  # shared mode: another process may have written the manifest meanwhile
            if self.shared:
                self._manifest = self._load_manifest()
                known = self._manifest.get(key)
                if known is not None:
                    if known != dim:
                        raise EmbeddingMismatchError(
                            f"{key.replace('_', ' ')} is {known} in this memory (set by another process) but the "
                            f"embedder returned {dim}; every process of a shared memory must use the same embedders"
                        )
                    return
            self._manifest[key] = dim
            atomic_write_bytes(self._manifest_path, json.dumps(self._manifest, indent=2).encode("utf-8"))

    def _embed_images(self, images: list[Image.Image]) -> np.ndarray:
        vectors = check_embeddings(
            self.image_embedder(images),
            count=len(images),
            what="image embedder",
            expected_dim=self._manifest.get("image_dim"),
        )
        self._remember_dim("image_dim", int(vectors.shape[1]))
        return vectors

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        vectors = check_embeddings(
            self.text_embedder.embed_documents(texts),
            count=len(texts),
            what="text embedder",
            expected_dim=self._manifest.get("text_dim"),
        )
        self._remember_dim("text_dim", int(vectors.shape[1]))
        return vectors

    # ------------------------------------------------------------------ adding

    def _to_pil(self, image: ImageInput) -> Image.Image:
        if isinstance(image, Image.Image):
            check_image_size(image, max_pixels=self.max_pixels)  # the library-wide limit and message
            return image
        if isinstance(image, str) and image.startswith("img_"):
            raise InvalidMemoryRequestError(
                f"{image!r} looks like a memory id; add() takes pixels. Use load(id) to get a stored image"
            )
        from seedx_agent.pipeline.images import load_image  # core helper: bytes / data URL / caller-side path -> RGB

        return load_image(image, max_pixels=self.max_pixels)

    def add(
        self,
        image: ImageInput,
        *,
        kind: str,
        namespace: str,
        prompt: str | None = None,
        caption: str | None = None,
        parent_id: str | None = None,
        operation: str | None = None,
        seed: int | None = None,
        model: str | None = None,
    ) -> ImageRecord:
        """Store one image and return its record (with a new opaque id).

        ``kind`` is "input", "generated" or "edited"; ``parent_id``/``operation`` record edit lineage and the
        parent must exist. Identical pixels are stored once on disk, but every call makes its own record.
        """
        (record,) = self.add_many(
            [image],
            kind=kind,
            namespace=namespace,
            prompts=[prompt],
            captions=[caption],
            parent_ids=[parent_id],
            operations=[operation],
            seeds=[seed],
            model=model,
            progress=False,
        )
        return record

    def add_many(
        self,
        images: Sequence[ImageInput],
        *,
        kind: str,
        namespace: str,
        prompts: Sequence[str | None] | None = None,
        captions: Sequence[str | None] | None = None,
        parent_ids: Sequence[str | None] | None = None,
        operations: Sequence[str | None] | None = None,
        seeds: Sequence[int | None] | None = None,
        model: str | None = None,
        batch_size: int = 32,
        progress: bool = True,
    ) -> list[ImageRecord]:
        """Store many images in batches (one embedder call and one chroma write per batch), all or nothing.

        The per-image sequences must match ``images`` in length. The call is one transaction: every batch is
        journalled under the same transaction id, which commits only after the last batch is stored. If anything
        fails part-way (a bad image at position 150, the embedder, chroma, Ctrl-C) the batches already written
        are rolled back before the error propagates, and after a crash (``kill -9``) the next open rolls them
        back: the records exist afterwards only if the call returned their ids. ``progress`` shows a tqdm bar.
        """
        self._check_open()
        images = list(images)
        count = len(images)
        columns: dict[str, list[Any]] = {}
        for name, values in (
            ("prompts", prompts),
            ("captions", captions),
            ("parent_ids", parent_ids),
            ("operations", operations),
            ("seeds", seeds),
        ):
            if values is None:
                columns[name] = [None] * count
            else:
                values = list(values)
                if len(values) != count:
                    raise InvalidMemoryRequestError(
                        f"{name} has {len(values)} entries but {count} images were given; pass one per image"
                    )
                columns[name] = values
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidMemoryRequestError(f"batch_size must be a positive int, got {batch_size!r}")
        if kind not in IMAGE_KINDS:
            raise InvalidMemoryRequestError(f"kind must be one of {list(IMAGE_KINDS)}, got {kind!r}")
        validate_namespace(namespace)
        for column, name in (("prompts", "prompt"), ("captions", "caption"), ("operations", "operation")):
            for index, value in enumerate(columns[column]):
                _check_text_field(value, name if count == 1 else f"{name} {index}")
        _check_text_field(model, "model")
        for parent in {parent for parent in columns["parent_ids"] if parent is not None}:
            self.get(parent)  # validates the shape and existence of every parent before anything is written

        transaction = _AddTransaction(txn=secrets.token_hex(4))
        records: list[ImageRecord] = []
        try:
            with tqdm(total=count, desc="storing images", unit="img", disable=not progress) as bar:
                for start in range(0, count, batch_size):
                    stop = min(start + batch_size, count)
                    batch_images = [self._to_pil(image) for image in images[start:stop]]
                    canonical = [canonical_image(image) for image in batch_images]
                    batch_records = [
                        self._new_record(
                            image,
                            kind=kind,
                            namespace=namespace,
                            model=model,
                            prompt=columns["prompts"][index],
                            caption=columns["captions"][index],
                            parent_id=columns["parent_ids"][index],
                            operation=columns["operations"][index],
                            seed=columns["seeds"][index],
                        )
                        for index, image in zip(range(start, stop), canonical)
                    ]
                    self._commit_batch(batch_images, canonical, batch_records, transaction)
                    records.extend(batch_records)
                    bar.update(stop - start)
            if transaction.ids:
                with self._write_lock:
                    self._check_open()
                    self._journal.commit(transaction.txn)  # acknowledged: from here on the records are permanent
        except BaseException:
            if transaction.ids:
                self._roll_back_add(transaction)
            raise
        return records

    def _new_record(self, image: CanonicalImage, **fields: Any) -> ImageRecord:
        try:
            return ImageRecord(
                id=new_image_id(),
                created_at=utc_now_ms(),
                content_hash=image.content_hash,
                width=image.width,
                height=image.height,
                **fields,
            )
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise InvalidMemoryRequestError(f"invalid image record fields: {problems}") from error

    def _stored_visual_embeddings(self, content_hashes: list[str]) -> dict[str, np.ndarray]:
        """Embeddings already stored for these contents (identical pixels need no second embedder call)."""
        found = self._visual.get(where={"content_hash": {"$in": content_hashes}}, include=["metadatas", "embeddings"])
        vectors: dict[str, np.ndarray] = {}
        for metadata, embedding in zip(
            found["metadatas"] or [], found["embeddings"] if found["embeddings"] is not None else []
        ):
            vectors.setdefault(metadata["content_hash"], np.asarray(embedding, dtype=np.float32))
        return vectors

    def _commit_batch(
        self,
        images: list[Image.Image],
        canonical: list[CanonicalImage],
        records: list[ImageRecord],
        transaction: _AddTransaction,
    ) -> None:
        """Write one batch of ``transaction``: files, a journal intent, then the chroma records (not committed:
        ``add_many`` commits the transaction after its last batch, or rolls every batch back)."""
        # Embeddings first, outside the write lock: this is the slow part (a ViT forward in the product).
        unique_hashes = list(dict.fromkeys(item.content_hash for item in canonical))
        known = self._stored_visual_embeddings(unique_hashes)
        to_embed = {
            item.content_hash: image for image, item in zip(images, canonical) if item.content_hash not in known
        }
        if to_embed:
            fresh = self._embed_images(list(to_embed.values()))
            known.update(zip(to_embed.keys(), fresh))
        visual_vectors = np.stack([known[item.content_hash] for item in canonical])  # (batch, image_dim)
        text_records = [record for record in records if record.text]
        text_vectors = self._embed_texts([record.text for record in text_records]) if text_records else None

        ids = [record.id for record in records]
        parents = sorted({record.parent_id for record in records if record.parent_id is not None})
        with self._write_lock:
            self._check_open()
            if parents:  # checked again under the lock: a parent may have been deleted meanwhile
                missing = set(parents) - set(self._visual.get(ids=parents, include=[])["ids"])
                if missing:
                    raise UnknownImageError(
                        f"parent image(s) {sorted(missing)} were deleted while adding their edits; add the edit "
                        "without parent_id or from an existing image",
                        image_id=sorted(missing)[0],
                    )
            written = [item.content_hash for item in canonical if self._files.write(item)]
            transaction.written_hashes.extend(written)
            self._journal.begin(
                {"op": "add", "ids": ids, "hashes": written, "txn": transaction.txn, "time": time.time()}
            )
            transaction.ids.extend(ids)
            self._visual.add(ids=ids, embeddings=visual_vectors, metadatas=[record.to_metadata() for record in records])
            self._index.add(self._index.VISUAL, records)
            self.vector_cache.append(
                self._index.VISUAL, [(record.id, record.namespace) for record in records], unit_rows(visual_vectors)
            )
            if text_vectors is not None:
                self._text.add(
                    ids=[record.id for record in text_records],
                    embeddings=text_vectors,
                    metadatas=[record.to_metadata() for record in text_records],
                )
                self._index.add(self._index.TEXT, text_records)
                self.vector_cache.append(
                    self._index.TEXT,
                    [(record.id, record.namespace) for record in text_records],
                    unit_rows(text_vectors),
                )

    def _roll_back_add(self, transaction: _AddTransaction) -> None:
        """Undo a failed ``add_many`` in-process (every batch it wrote); if that fails too, the journal keeps the
        transaction's intents and the next open finishes the job."""
        with self._write_lock:
            self._forget(transaction.ids)
            if self._client is None:  # closed meanwhile (the root may be someone else's now): the journal has it
                return
            try:
                delete_ids(self._text, transaction.ids)
                delete_ids(self._visual, transaction.ids)
                for content_hash in set(transaction.written_hashes):
                    if not self._hash_referenced(content_hash):
                        self._files.remove(content_hash)
                self._journal.commit(transaction.txn)
            except Exception:
                logger.exception(
                    "could not roll back a failed add in %s; the journal keeps it and the next open repairs it",
                    self.root,
                )

    def _hash_referenced(self, content_hash: str) -> bool:
        return bool(self._visual.get(where={"content_hash": content_hash}, limit=1, include=[])["ids"])

    # ------------------------------------------------------------------ reading

    def get(self, image_id: str, *, namespace: str | None = None) -> ImageRecord:
        """The record of ``image_id``; with ``namespace``, only if it lies in that namespace (or below).

        Raises ``InvalidImageIdError`` for anything that is not id-shaped and ``UnknownImageError`` otherwise.
        """
        self._check_open()
        validate_image_id(image_id)
        if namespace is not None:
            validate_namespace(namespace)
        found = self._visual.get(ids=[image_id], include=["metadatas"])
        if found["ids"]:
            record = ImageRecord.from_metadata(found["ids"][0], found["metadatas"][0])
            if namespace is None or in_namespace(record.namespace, namespace):
                return record
        scope = f" in namespace {namespace!r}" if namespace is not None else ""
        raise UnknownImageError(
            f"no image with id {image_id!r}{scope}; use an id returned by add() or a search", image_id=image_id
        )

    def load(self, image_id: str, *, namespace: str | None = None) -> Image.Image:
        """The stored pixels of ``image_id`` as a new RGB PIL image."""
        record = self.get(image_id, namespace=namespace)
        path = self._files.path_for(record.content_hash)
        try:
            with Image.open(path) as stored:
                stored.load()
                return stored.convert("RGB")
        except FileNotFoundError:
            raise ImageMemoryError(
                f"the file of {image_id!r} is missing from {self.root}; close and reopen the memory to repair it"
            ) from None

    def image_path(self, image_id: str) -> Path:
        """Path of the stored PNG (read-only use, e.g. for exporting a storyboard); never taken from callers."""
        return self._files.path_for(self.get(image_id).content_hash)

    def count(self, namespace: str | None = None) -> int:
        """Number of records (in ``namespace`` and below, if given)."""
        self._check_open()
        if namespace is None:
            return self._visual.count()
        return sum(1 for _ in iter_ids(self._visual, namespace_clause(validate_namespace(namespace))))

    def find(
        self, where: dict[str, Any] | None = None, *, namespace: str | None = None, limit: int | None = None
    ) -> list[ImageRecord]:
        """Records matching a metadata filter (chroma syntax over record fields), oldest first.

        Example: ``find({"kind": "edited", "width": {"$gte": 512}}, namespace="user:alice")``.
        """
        self._check_open()
        filters = combine_where(self._namespace_filter(namespace), validate_where(where))
        if limit is not None:
            _check_k(limit, "limit")
        records = [
            ImageRecord.from_metadata(image_id, metadata) for image_id, metadata in iter_metadata(self._visual, filters)
        ]
        records.sort(key=lambda record: (record.created_at, record.id))
        return records if limit is None else records[:limit]

    def lineage(self, image_id: str) -> list[ImageRecord]:
        """The edit chain ending at ``image_id``, root first. Stops early at a parent that was deleted."""
        chain = [self.get(image_id)]
        seen = {image_id}
        while chain[-1].parent_id is not None and len(chain) < MAX_LINEAGE_DEPTH:
            parent_id = chain[-1].parent_id
            if parent_id in seen:  # impossible for ids issued here (parents exist first); guard anyway
                break
            try:
                chain.append(self.get(parent_id))
            except UnknownImageError:
                logger.debug("lineage of %s stops at deleted parent %s", image_id, parent_id)
                break
            seen.add(parent_id)
        chain.reverse()
        return chain

    def children(self, image_id: str) -> list[ImageRecord]:
        """Records made from ``image_id`` (direct edits), oldest first."""
        self.get(image_id)
        return self.find({"parent_id": image_id})

    # ------------------------------------------------------------------ search

    def search_text(
        self,
        query: str,
        *,
        k: int = 5,
        namespace: str | None = None,
        where: dict[str, Any] | None = None,
        min_score: float | None = None,
    ) -> list[ImageHit]:
        """Images whose prompt/caption best match ``query`` (records without text are not in this index).

        Hits scoring below ``min_score`` (default: the memory's ``min_text_score``) are left out, so a query with
        nothing in common with any record returns ``[]`` rather than the least dissimilar images.
        """
        self._check_open()
        if not isinstance(query, str) or not query.strip():
            raise InvalidMemoryRequestError(f"query must be a non-empty string, got {query!r}")
        validate_text(query, "query")
        _check_k(k, "k")
        floor = self.min_text_score if min_score is None else _check_min_score(min_score, "min_score")
        if namespace is not None:
            validate_namespace(namespace)
        where = validate_where(where)
        query_vector = check_embeddings(
            [self.text_embedder.embed_query(query)],
            count=1,
            what="text embedder",
            expected_dim=self._manifest.get("text_dim"),
        )
        if not np.any(query_vector):
            return []  # nothing to compare (e.g. a blank-after-tokenisation query): cosine is undefined
        return self._search(NamespaceIndex.TEXT, query_vector, k=k, namespace=namespace, where=where, floor=floor)

    def search_image(
        self,
        image_or_id: ImageInput | str,
        *,
        k: int = 5,
        namespace: str | None = None,
        where: dict[str, Any] | None = None,
        min_score: float | None = None,
    ) -> list[ImageHit]:
        """Visually similar images to a given image, or to a stored image id (which is left out of the hits).

        Hits scoring below ``min_score`` (default: the memory's ``min_image_score``, off unless set) are left out.
        """
        self._check_open()
        _check_k(k, "k")
        floor = self.min_image_score if min_score is None else _check_min_score(min_score, "min_score")
        if namespace is not None:
            validate_namespace(namespace)
        where = validate_where(where)
        exclude: str | None = None
        if isinstance(image_or_id, str) and not image_or_id.startswith("data:"):
            exclude = validate_image_id(image_or_id)
            found = self._visual.get(ids=[exclude], include=["embeddings"])
            if not found["ids"]:
                raise UnknownImageError(
                    f"no image with id {exclude!r}; use an id returned by add() or a search", image_id=exclude
                )
            query_vector = np.asarray(found["embeddings"], dtype=np.float32)  # (1, image_dim)
        else:
            query_vector = self._embed_images([self._to_pil(image_or_id)])
        return self._search(
            NamespaceIndex.VISUAL, query_vector, k=k, namespace=namespace, where=where, floor=floor, exclude=exclude
        )

    def _search(
        self,
        which: Which,
        query_vector: np.ndarray,
        *,
        k: int,
        namespace: str | None,
        where: dict[str, Any] | None,
        floor: float,
        exclude: str | None = None,
    ) -> list[ImageHit]:
        """The ``k`` best hits scoring >= ``floor`` (``exclude`` left out), best first.

        A namespace filter without ``where`` goes through the namespace index (module ``namespace_index``): an
        empty namespace answers at once, one of up to ``VECTOR_CACHE_MAX_ROWS`` records that fits the vector cache
        is scored exactly against its cached vectors (module ``vector_cache``), a tiny one is otherwise scanned
        exactly, a large share of the collection is over-fetched unfiltered and filtered here; otherwise (and
        whenever the over-fetch did not settle the answer) chroma's own metadata filter runs, as every query with
        ``where`` does.
        """
        collection = self._visual if which == NamespaceIndex.VISUAL else self._text
        if namespace is not None and where is None and self.namespace_fast_path and not self.shared:
            hits = self._search_namespace(collection, which, query_vector, k, namespace, floor, exclude)
            if hits is not None:
                return hits
        filters = combine_where(self._namespace_filter(namespace), where)
        hits = self._query(collection, query_vector, k=k + (exclude is not None), where=filters)
        return [hit for hit in hits if hit.record.id != exclude and hit.score >= floor][:k]

    def _search_namespace(
        self,
        collection: Collection,
        which: Which,
        query_vector: np.ndarray,
        k: int,
        namespace: str,
        floor: float,
        exclude: str | None,
    ) -> list[ImageHit] | None:
        """The namespace-filtered search without chroma's filter, or None when chroma's filter must answer."""
        members = self._index.count(which, namespace)
        if members == 0:
            return []
        dim = self._manifest.get("image_dim" if which == NamespaceIndex.VISUAL else "text_dim")
        if members <= VECTOR_CACHE_MAX_ROWS and dim and self.vector_cache.fits(members, dim):
            cached = self.vector_cache.get(which, namespace) or self._fill_vector_cache(collection, which, namespace)
            return self._hits(collection, _best(cached, query_vector, k, floor, exclude))
        if members <= EXACT_SCAN_MAX:  # a tiny namespace: exact cosine over its stored vectors
            found = collection.get(ids=self._index.members(which, namespace), include=["embeddings"])
            if not found["ids"]:
                return []
            vectors = CachedVectors(ids=found["ids"], vectors=unit_rows(found["embeddings"]))
            return self._hits(collection, _best(vectors, query_vector, k, floor, exclude))
        total = self._index.size(which)
        wanted = k + (exclude is not None)
        fetch = min(total, math.ceil(wanted * total / members * OVERFETCH_FACTOR) + OVERFETCH_SLACK)
        if fetch > OVERFETCH_MAX:  # the namespace is too small a share for an unfiltered query to reach k of it
            return None
        result = collection.query(query_embeddings=query_vector, n_results=fetch, include=["distances"])
        ids, distances = result["ids"][0], result["distances"][0]
        settled = len(ids) < fetch or fetch >= total  # the whole collection came back
        chosen: list[tuple[str, float]] = []
        for image_id, distance in zip(ids, distances):
            score = 1.0 - float(distance)
            if score < floor:  # hits come best first: nothing further can pass the floor
                settled = True
                break
            record_namespace = self._index.namespace_of(image_id)
            if image_id == exclude or record_namespace is None or not in_namespace(record_namespace, namespace):
                continue  # another namespace, or an add in flight that no caller has been told about
            chosen.append((image_id, score))
            if len(chosen) == k:
                settled = True
                break
        return self._hits(collection, chosen) if settled else None

    def _fill_vector_cache(self, collection: Collection, which: Which, namespace: str) -> CachedVectors:
        """Read the vectors of ``namespace`` and below from chroma and cache them; returns them even when they
        did not fit the cache. Under the write lock, so no write falls between reading the members and caching."""
        with self._write_lock:
            self._check_open()
            cached = self.vector_cache.get(which, namespace)  # another thread may have filled it meanwhile
            if cached is not None:
                return cached
            members = self._index.members(which, namespace)
            ids: list[str] = []
            parts: list[np.ndarray] = []
            for start in range(0, len(members), PAGE_SIZE):
                found = collection.get(ids=members[start : start + PAGE_SIZE], include=["embeddings"])
                if found["ids"]:
                    ids.extend(found["ids"])
                    parts.append(unit_rows(found["embeddings"]))
            vectors = np.concatenate(parts) if parts else np.zeros((0, 1), dtype=np.float32)
            return self.vector_cache.put(which, namespace, ids, vectors) or CachedVectors(ids=ids, vectors=vectors)

    @staticmethod
    def _hits(collection: Collection, chosen: list[tuple[str, float]]) -> list[ImageHit]:
        """Hits for (id, score) pairs, best first, with the records read from chroma (one ``get``; fetching
        metadata costs about as much per record as a query, so only the winners are read)."""
        if not chosen:
            return []
        found = collection.get(ids=[image_id for image_id, _ in chosen], include=["metadatas"])
        metadata_of = dict(zip(found["ids"], found["metadatas"]))
        return [  # an id missing here was deleted since the query: leave it out
            ImageHit(record=ImageRecord.from_metadata(image_id, metadata_of[image_id]), score=score)
            for image_id, score in chosen
            if image_id in metadata_of
        ]

    def _query(self, collection: Collection, query_vector: np.ndarray, *, k: int, where: dict | None) -> list[ImageHit]:
        # No count() first: it scans the collection (linear in its size) and an empty query already returns [].
        result = collection.query(
            query_embeddings=query_vector, n_results=k, where=where, include=["metadatas", "distances"]
        )
        return [
            ImageHit(record=ImageRecord.from_metadata(image_id, metadata), score=1.0 - float(distance))
            for image_id, metadata, distance in zip(result["ids"][0], result["metadatas"][0], result["distances"][0])
        ]

    @staticmethod
    def _namespace_filter(namespace: str | None) -> dict[str, Any] | None:
        return None if namespace is None else namespace_clause(validate_namespace(namespace))

    # ------------------------------------------------------------------ deleting

    def delete(self, image_id: str, *, namespace: str | None = None) -> None:
        """Remove a record; its file goes too unless another record has the same content.

        Children keep their ``parent_id``; their ``lineage`` then starts at the first surviving ancestor.
        """
        with self._write_lock:
            record = self.get(image_id, namespace=namespace)
            txn = secrets.token_hex(4)
            self._journal.begin(
                {"op": "delete", "ids": [image_id], "hashes": [record.content_hash], "txn": txn, "time": time.time()}
            )
            self._forget([image_id])
            delete_ids(self._text, [image_id])
            delete_ids(self._visual, [image_id])
            if not self._hash_referenced(record.content_hash):
                self._files.remove(record.content_hash)
            self._journal.commit(txn)

    def _forget(self, ids: list[str]) -> None:
        """Drop ``ids`` from the namespace index and the vector cache (under the write lock, before chroma)."""
        self.vector_cache.discard([(image_id, self._index.namespace_of(image_id)) for image_id in ids])
        self._index.discard(ids)

    # ------------------------------------------------------------------ repair

    def repair(self) -> RepairReport:
        """Restore "every record has its file, every file has a record" after a crash; runs on every open.

        Rolls back the uncommitted adds and finishes the deletes of every journal whose writer is gone. The full
        sweep (records without a file, files without a record, temp files) runs only while this process has the
        root to itself: always in single-process mode; in shared mode only for the first opener, since another
        process's add in flight looks like damage to a sweep.
        """
        self._check_open()
        with self._write_lock:
            self.vector_cache.clear()  # refilled from chroma by the next queries, under this same lock
            alone = self._lock.alone
            counts: dict[str, int] = {}
            journals = [self._journal] if alone else []  # our own, when no thread of ours can be mid-write
            if self.shared:
                single = self.root / SINGLE_JOURNAL  # a single-process writer cannot be open beside us: it is dead
                journals.append(Journal(single))
            dead = dead_journals(self.root / JOURNALS, exclude=self._peers.writer if self._peers else None)
            try:
                journals += [Journal(path) for path, _ in dead]
                entries: list[dict[str, Any]] = []
                counts["torn_journal_lines"] = 0
                for journal in journals:
                    pending, torn = journal.pending()
                    entries += pending
                    counts["torn_journal_lines"] += torn
                pending_adds = sorted({i for e in entries if e.get("op") == "add" for i in e.get("ids", [])})
                pending_deletes = sorted({i for e in entries if e.get("op") == "delete" for i in e.get("ids", [])})
                pending = pending_adds + pending_deletes
                present = set(self._visual.get(ids=pending, include=[])["ids"]) if pending else set()
                counts["rolled_back_adds"] = sum(1 for image_id in pending_adds if image_id in present)
                counts["completed_deletes"] = sum(1 for image_id in pending_deletes if image_id in present)
                delete_ids(self._text, pending)
                delete_ids(self._visual, pending)
                if alone:
                    self._sweep(counts)
                else:  # only the files the dead writers' intents name, and only if no record uses them
                    self._index.discard(pending)
                    counts["orphan_files"] = 0
                    for content_hash in sorted({h for e in entries for h in e.get("hashes", [])}):
                        if self._files.exists(content_hash) and not self._hash_referenced(content_hash):
                            self._files.remove(content_hash)
                            counts["orphan_files"] += 1
                    # A writer killed inside a file write leaves a temp file no intent names (files come before
                    # the intent). Live writers only write files under the write lock we hold, so every temp file
                    # is a dead writer's.
                    counts["temp_files"] = self._files.remove_temp_files() if dead else 0
                for journal in journals:
                    if journal is self._journal or journal.path.name == SINGLE_JOURNAL:
                        journal.commit()
                for path, alive in dead:
                    forget(path, alive)
            finally:
                for _, alive in dead:
                    alive.unlock()
            report = RepairReport(**counts)
            if not report.clean:
                logger.warning("repaired the image memory at %s: %s", self.root, report)
            return report

    def _sweep(self, counts: dict[str, int]) -> None:
        """The full consistency sweep of ``repair`` (only while no other process has the root open)."""
        visual = dict(iter_metadata(self._visual))
        text_ids = set(iter_ids(self._text))
        without_file = [i for i, meta in visual.items() if not self._files.exists(str(meta.get("content_hash", "")))]
        incomplete = [
            i
            for i, meta in visual.items()
            if i not in text_ids and (meta.get("prompt") or meta.get("caption")) and i not in without_file
        ]
        dangling_text = [i for i in text_ids if i not in visual]
        delete_ids(self._text, dangling_text + without_file)
        delete_ids(self._visual, without_file + incomplete)
        counts["records_without_file"] = len(without_file)
        counts["incomplete_records"] = len(incomplete)
        counts["dangling_text_entries"] = len(dangling_text)

        removed = set(without_file) | set(incomplete)
        referenced = {meta.get("content_hash") for i, meta in visual.items() if i not in removed}
        self._index.rebuild(
            {i: str(meta.get("namespace", "")) for i, meta in visual.items() if i not in removed},
            (i for i in text_ids if i not in removed and i not in dangling_text),
        )
        counts["orphan_files"] = counts["temp_files"] = counts["unknown_files"] = 0
        for path, content_hash in self._files.scan():
            if content_hash is not None:
                if content_hash not in referenced:
                    self._files.remove(content_hash)
                    counts["orphan_files"] += 1
            elif self._files.is_temp(path):
                path.unlink(missing_ok=True)
                counts["temp_files"] += 1
            else:
                counts["unknown_files"] += 1
                logger.warning("unexpected file %s in the image memory; leaving it alone", path)


def _release_quietly(client: ClientAPI, lock: RootLock, peers: PeerJournals | None) -> None:
    """Finalizer of an ImageMemory that was never closed: close chroma, deregister, release the root."""
    try:
        client.close()
    except Exception:
        logger.debug("closing chroma from the finalizer failed", exc_info=True)
    if peers is not None:
        peers.close()
    lock.release()


@dataclass
class _AddTransaction:
    """One ``add_many`` call: its journal transaction id, the ids journalled so far and the files it created."""

    txn: str
    ids: list[str] = field(default_factory=list)
    written_hashes: list[str] = field(default_factory=list)


def _best(
    candidates: CachedVectors, query_vector: np.ndarray, k: int, floor: float, exclude: str | None
) -> list[tuple[str, float]]:
    """The ``k`` best (id, exact cosine score) of ``candidates`` scoring >= ``floor``, ``exclude`` left out."""
    if not candidates.ids:
        return []
    scores = candidates.scores(unit_rows(query_vector)[0])  # (rows,)
    wanted = min(k + (exclude is not None), len(scores))
    top = np.argpartition(-scores, wanted - 1)[:wanted] if wanted < len(scores) else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    chosen = [(candidates.ids[row], float(scores[row])) for row in top]
    return [(image_id, score) for image_id, score in chosen if image_id != exclude and score >= floor][:k]


def _check_text_field(value: object, name: str) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidMemoryRequestError(f"{name} must be a string or None, got {type(value).__name__}")
    validate_text(value, name)


def _check_min_score(min_score: object, name: str) -> float:
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not -1.0 <= min_score <= 1.0:
        raise InvalidMemoryRequestError(
            f"{name} must be a number between -1 and 1 (a cosine similarity), got {min_score!r}; "
            "use -1 to keep every hit"
        )
    return float(min_score)


def _check_k(k: object, name: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_RESULTS:
        raise InvalidMemoryRequestError(f"{name} must be an int between 1 and {MAX_RESULTS}, got {k!r}")
