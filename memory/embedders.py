"""Embedders the memory works with: the image-embedder contract and an offline text embedder.

There is deliberately no default *image* embedder here: visual search is meant to run on SEED-X ViT
features, which the tools layer wires in (the memory must not import the model core). Tests bring their
own small deterministic one.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable, Sequence

import numpy as np
from langchain_core.embeddings import Embeddings
from PIL import Image

from .errors import EmbeddingMismatchError

__all__ = ["HashingTextEmbeddings", "ImageEmbedder", "check_embeddings"]

ImageEmbedder = Callable[[list[Image.Image]], np.ndarray]
"""Maps a list of RGB images to a float array of shape (len(images), dim); same dim for every call."""

_WORD_PATTERN = re.compile(r"\w+")


class HashingTextEmbeddings(Embeddings):
    """Offline default text embedder: signed feature hashing of lower-cased word unigrams and bigrams.

    A real but weak, purely lexical embedding (no download, deterministic across processes and machines):
    "red car" is close to "a red car parked" and far from "crimson automobile". Plug a semantic
    ``langchain_core`` ``Embeddings`` into ``ImageMemory.open(text_embedder=...)`` for better recall.
    Vectors are L2-normalised; blank text maps to the zero vector.
    """

    def __init__(self, dim: int = 256, *, bigram_weight: float = 0.5) -> None:
        if not isinstance(dim, int) or dim < 8:
            raise EmbeddingMismatchError(f"HashingTextEmbeddings dim must be an int >= 8, got {dim!r}")
        self.dim = dim
        self.bigram_weight = float(bigram_weight)

    def _features(self, text: str) -> list[tuple[str, float]]:
        lowered = text.lower()
        tokens = _WORD_PATTERN.findall(lowered) or lowered.split()  # punctuation-only text still gets features
        features = [(f"u:{token}", 1.0) for token in tokens]
        features += [(f"b:{first} {second}", self.bigram_weight) for first, second in itertools.pairwise(tokens)]
        return features

    def embed_text(self, text: str) -> np.ndarray:
        """One (dim,) float32 vector for ``text``."""
        vector = np.zeros(self.dim, dtype=np.float64)
        for feature, weight in self._features(text):
            digest = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
            bucket = digest % self.dim
            sign = 1.0 if (digest >> 63) & 1 else -1.0  # the top bit is independent of the bucket for dim << 2**63
            vector[bucket] += sign * weight
        norm = np.linalg.norm(vector)
        if norm > 0:
            vector /= norm
        return vector.astype(np.float32)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed each text (LangChain ``Embeddings`` API)."""
        return [self.embed_text(text).tolist() for text in texts]

    def embed_query(self, text: str) -> list[float]:
        """Embed a query the same way as a document (the features are symmetric)."""
        return self.embed_text(text).tolist()


def check_embeddings(vectors: object, *, count: int, what: str, expected_dim: int | None = None) -> np.ndarray:
    """Validate an embedder's output: (count, dim) finite floats, returned as float32.

    ``what`` names the embedder in the error message ("image embedder", "text embedder").
    """
    try:
        array = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise EmbeddingMismatchError(
            f"the {what} returned {type(vectors).__name__}, which is not a numeric (n, dim) array: {error}"
        ) from error
    if array.ndim != 2 or array.shape[0] != count or array.shape[1] == 0:
        raise EmbeddingMismatchError(
            f"the {what} returned an array of shape {tuple(array.shape)} for {count} inputs; "
            f"it must return shape ({count}, dim) with dim > 0"
        )
    if not np.isfinite(array).all():
        raise EmbeddingMismatchError(f"the {what} returned NaN or infinite values; check the embedder")
    if expected_dim is not None and array.shape[1] != expected_dim:
        raise EmbeddingMismatchError(
            f"the {what} returns {array.shape[1]}-d vectors but this memory was built with {expected_dim}-d ones; "
            f"open it with the embedder it was built with, or use a new memory root"
        )
    return array


def unit_rows(vectors: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """L2-normalise each row (zero rows stay zero); used for cosine scores outside chroma."""
    array = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    return np.divide(array, norms, out=np.zeros_like(array), where=norms > 0)
