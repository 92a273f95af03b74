"""Prefix KV cache: ask several questions about one image without re-encoding it.

A prompt about images is split at the end of its last image block. The prefix (``<s>[INST] <patch>..</img>``)
holds all the expensive work: any-res ViT encoding, the input resampler and the LLM prefill over hundreds
of image tokens. Its KV entries are stored under a key made of the LLM's identity, the content hash of
every crop and the prefix token ids, so a later turn or another question about the same image only runs
the text after the image.

The uncached path splits the prompt at the same place, so the cached path feeds the model exactly the
same tensors and its outputs are bit-identical (pinned by tests/test_kv_cache.py). Stored tensors are
never modified: a ``DynamicLayer`` grows by ``torch.cat`` into new tensors and a ``GrowingLayer``
(``seedx_agent.kv_layers``) copy re-allocates before writing, so a hit hands out fresh layer objects that
share the stored tensors (no copy).
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from seedx_agent.errors import ConfigError

__all__ = ["DEFAULT_MAX_BYTES", "CacheStats", "PrefixKVCache", "cache_nbytes", "crops_fingerprint", "share_cache"]

DEFAULT_MAX_BYTES = 2 * 2**30  # 2 GiB: ~5 full-size SEED-X prompts with a 2x2 image in bf16


@dataclass
class CacheStats:
    """Counters of one ``PrefixKVCache`` (hits, misses, evictions, bytes and entries now held)."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes: int = 0
    entries: int = 0


def crops_fingerprint(crops: Sequence[object]) -> str:
    """A content hash of the model's image inputs (each crop's pixels and patch positions).

    Uses ``AnyResCrops.content_hash`` (computed by ``preprocess`` from the uint8 crops) when present,
    else hashes the normalised tensors; either way identical pixels give identical keys.
    """
    digest = hashlib.blake2b(digest_size=20)
    for crop in crops:
        content = getattr(crop, "content_hash", None)
        if content:
            digest.update(content.encode())
        else:
            for tensor in (crop.pixel_values, crop.patch_positions):  # type: ignore[attr-defined]
                array = tensor.detach().to("cpu").contiguous().numpy()
                digest.update(str((array.dtype, array.shape)).encode())
                digest.update(memoryview(array).cast("B"))
        digest.update(b"|")
    return digest.hexdigest()


def cache_nbytes(cache: object) -> int:
    """Bytes held by the key and value tensors of a transformers ``Cache``."""
    total = 0
    for layer in getattr(cache, "layers", ()):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def share_cache(cache: object, *, compact: bool = False) -> object:
    """A new cache object over the same KV tensors; growing it leaves ``cache`` untouched.

    ``DynamicLayer.update`` replaces its tensors by ``torch.cat`` results, and a ``GrowingLayer`` copy owns
    no buffer (it re-allocates before its first write), so sharing is safe for both. ``compact`` gives
    ``GrowingLayer`` copies exact-size tensors of their own, so a long-lived snapshot does not pin the
    original's spare capacity. Any other layer type (sliding windows, quantised, offloaded) is deep-copied.
    """
    from transformers.cache_utils import DynamicLayer

    from seedx_agent.kv_layers import GrowingLayer

    def copy_layer(layer: object) -> object:
        if type(layer) is DynamicLayer:
            return copy.copy(layer)
        if type(layer) is GrowingLayer:
            shared = copy.copy(layer)
            shared.release()
            if compact and shared.is_initialized:
                shared.keys, shared.values = shared.keys.clone(), shared.values.clone()
            return shared
        return copy.deepcopy(layer)

    shared = copy.copy(cache)
    shared.layers = [copy_layer(layer) for layer in cache.layers]  # type: ignore[attr-defined]
    return shared


class PrefixKVCache:
    """LRU map from (LLM identity, image hashes, prefix ids) to a prefilled KV cache, bounded in bytes.

    ``max_bytes=0`` (or ``enabled=False``) turns it off. An entry larger than ``max_bytes`` is not kept.
    Thread-safe. Changing a model's weights in place makes entries stale: call ``clear()`` then.
    """

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES, enabled: bool = True) -> None:
        self._entries: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()
        self.enabled = enabled
        self.max_bytes = max_bytes

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"max_bytes must be an integer >= 0 (0 turns the cache off), got {value!r}")
        with self._lock:
            self._max_bytes = value
            self._evict_locked()

    @property
    def active(self) -> bool:
        """Whether lookups and stores happen at all."""
        return self.enabled and self._max_bytes > 0

    @staticmethod
    def make_key(model_identity: Hashable, image_fingerprint: str, prefix_ids: Sequence[int]) -> tuple:
        """The cache key; ``model_identity`` names the LLM weights (e.g. variant, ``id``, dtype, device)."""
        return (model_identity, image_fingerprint, tuple(int(t) for t in prefix_ids))

    def get(self, key: Hashable) -> object | None:
        """A private copy (sharing tensors) of the cached KV for ``key``, or ``None``; refreshes its LRU slot."""
        if not self.active:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self.stats.hits += 1
        return share_cache(entry[0])

    def put(self, key: Hashable, cache: object) -> bool:
        """Store a snapshot of ``cache`` (it may keep growing afterwards); returns whether it was kept."""
        if not self.active:
            return False
        size = cache_nbytes(cache)
        if size > self._max_bytes:
            return False
        snapshot = share_cache(cache, compact=True)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.stats.bytes -= old[1]
            self._entries[key] = (snapshot, size)
            self.stats.bytes += size
            self._evict_locked()
            self.stats.entries = len(self._entries)
        return True

    def clear(self) -> None:
        """Drop every entry (e.g. after changing weights)."""
        with self._lock:
            self._entries.clear()
            self.stats.bytes = 0
            self.stats.entries = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def _evict_locked(self) -> None:
        entries = getattr(self, "_entries", None)
        if entries is None:
            return
        while entries and self.stats.bytes > self._max_bytes:
            _, (_, size) = entries.popitem(last=False)
            self.stats.bytes -= size
            self.stats.evictions += 1
        self.stats.entries = len(entries)
