"""Prefix KV cache: ask several questions about one image without re-encoding it.

A prompt about images is split at the end of its last image block. The prefix (``<s>[INST] <patch>..</img>``)
holds all the expensive work: any-res ViT encoding, the input resampler and the LLM prefill over hundreds
of image tokens. Its KV entries are stored under a key made of the LLM's identity, the content hash of
every crop and the prefix token ids, so a later turn or another question about the same image only runs
the text after the image.

Keys also hold a weights version (``weights_version``) of every module the prefix went through (ViT and
LVLM): parameter/buffer identities, storage pointers, autograd version counters, dtypes, devices, shapes,
peft adapter state and an exact integer checksum of the weights' bits. Any in-place change (``load_state_dict``,
an optimiser step, ``param.data.add_`` which autograd does not count, a LoRA merge or adapter swap, a device
move or cast) gives a new version, and ``sync_weights`` drops the entries stored under the old one, so a
stale prefix is never reused. The checksum reads every weight once per lookup (numpy int64 sums, ~10 GB/s
on CPU: ~2 ms per lookup for the 19 MB of ``mini``'s ViT + LLM, a few % of a follow-up question);
``content_check=False`` skips it, leaving only the metadata (~0.6 ms), which misses writes through ``.data``.

The uncached path splits the prompt at the same place, so the cached path feeds the model exactly the
same tensors and its outputs are bit-identical (pinned by tests/test_kv_cache.py). Stored tensors are
never modified: a ``DynamicLayer`` grows by ``torch.cat`` into new tensors and a ``GrowingLayer``
(``seedx_agent.speed.growing_kv``) copy re-allocates before writing, so a hit hands out fresh layer objects that
share the stored tensors (no copy).
"""

from __future__ import annotations

import copy
import hashlib
import sys
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from seedx_agent.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "CacheStats",
    "PrefixKVCache",
    "cache_nbytes",
    "crops_fingerprint",
    "share_cache",
    "weights_version",
]

DEFAULT_MAX_BYTES = 2 * 2**30  # 2 GiB: ~5 full-size SEED-X prompts with a 2x2 image in bf16


@dataclass
class CacheStats:
    """Counters of one ``PrefixKVCache`` (hits, misses, evictions, bytes and entries now held)."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes: int = 0
    entries: int = 0
    invalidations: int = 0  # entries dropped because their model's weights changed


_INT_VIEWS: dict[int, torch.dtype] = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_NUMPY_INTS = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def _module_tensors(modules: Iterable[nn.Module]) -> list[torch.Tensor]:
    """Every parameter and buffer of ``modules``, each once (tied weights and shared modules deduplicated)."""
    seen: set[int] = set()
    tensors: list[torch.Tensor] = []
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                tensors.append(tensor)
    return tensors


def _bits(tensor: torch.Tensor) -> torch.Tensor | None:
    """``tensor``'s bits as integers: int64 words where the memory allows (fastest to sum), else integers
    of the element's width; None where neither is possible."""
    bits = tensor.detach()
    if bits.is_complex():
        bits = torch.view_as_real(bits)
    if bits.dtype == torch.bool:
        bits = bits.view(torch.uint8)
    if bits.is_contiguous() and (bits.numel() * bits.element_size()) % 8 == 0:
        try:
            return bits.reshape(-1).view(torch.int64)
        except RuntimeError:  # e.g. a storage offset that is not a multiple of 8 bytes
            pass
    if bits.is_floating_point():
        width = _INT_VIEWS.get(bits.element_size())
        return bits.view(width) if width is not None else None
    return bits


def _content_sums(tensors: Sequence[torch.Tensor]) -> list[int]:
    """Exact wrapping int64 sums of each tensor's bits: a single changed element always changes its sum."""
    sums: list[int] = []
    pending: list[tuple[int, torch.Tensor]] = []  # accelerator sums, fetched with one sync at the end
    for tensor in tensors:
        bits = None if tensor.is_meta or tensor.numel() == 0 else _bits(tensor)
        if bits is None:
            sums.append(0)
        elif bits.device.type == "cpu" and bits.dtype in _NUMPY_INTS:
            # numpy's integer reduction is ~10x faster than torch's on CPU (int64 words: ~40 GB/s)
            sums.append(int(bits.numpy().sum(dtype=np.int64)))
        else:
            pending.append((len(sums), bits.sum(dtype=torch.int64)))
            sums.append(0)
    if pending:
        values = torch.stack([value.to("cpu") for _, value in pending]).tolist()
        for (index, _), value in zip(pending, values, strict=True):
            sums[index] = int(value)
    return sums


def _adapter_state(modules: Iterable[nn.Module]) -> list[object]:
    """Active / merged / disabled adapters of every peft layer (switching adapters changes no tensor)."""
    tuners = sys.modules.get("peft.tuners.tuners_utils")
    base = getattr(tuners, "BaseTunerLayer", None)
    if base is None:
        return []
    state: list[object] = []
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, base):
                state.append(
                    (
                        id(layer),
                        tuple(layer.active_adapters),
                        tuple(layer.merged_adapters),
                        bool(layer.disable_adapters),
                        repr(getattr(layer, "scaling", None)),
                    )
                )
    return state


def weights_version(modules: Iterable[nn.Module], *, content: bool = True) -> str:
    """A digest that changes whenever the weights of ``modules`` change in place or are replaced.

    It covers each parameter's and buffer's identity, storage pointer, autograd version counter, dtype,
    device and shape, the modules' train/eval mode and peft adapter state, and with ``content`` an exact
    integer checksum of the bits, which also sees writes through ``.data`` (autograd's counter does not).
    """
    modules = list(modules)
    tensors = _module_tensors(modules)
    items: list[object] = [tuple(m.training for m in modules), _adapter_state(modules)]
    for tensor in tensors:
        try:
            version = tensor._version
        except RuntimeError:  # inference tensors have no version counter
            version = -1
        items.append(
            (id(tensor), tensor.data_ptr(), version, str(tensor.dtype), str(tensor.device), tuple(tensor.shape))
        )
    if content:
        items.append(_content_sums(tensors))
    return hashlib.blake2b(repr(items).encode(), digest_size=16).hexdigest()


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

    from seedx_agent.speed.growing_kv import GrowingLayer

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
    """LRU map from (LLM identity, weights version, image hashes, prefix ids) to a prefilled KV cache.

    Bounded in bytes: ``max_bytes=0`` (or ``enabled=False``) turns it off and an entry larger than
    ``max_bytes`` is not kept. Thread-safe. The user of the cache passes the current ``weights_version`` of
    the model with every key and calls ``sync_weights`` first, so entries of changed weights are dropped
    (module docstring). ``content_check`` (default on) makes that version include the weights' checksum.
    """

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES, enabled: bool = True, content_check: bool = True) -> None:
        self._entries: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._versions: dict[Hashable, Hashable] = {}  # model identity -> weights version of its entries
        self._lock = threading.Lock()
        self.stats = CacheStats()
        self.enabled = enabled
        self.content_check = content_check
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
    def make_key(
        model_identity: Hashable,
        image_fingerprint: str,
        prefix_ids: Sequence[int],
        weights_version: Hashable = None,
    ) -> tuple:
        """The cache key; ``model_identity`` names the model (e.g. ``id``, dtype, device), ``weights_version``
        the state of its weights (``weights_version(...)``)."""
        return (model_identity, weights_version, image_fingerprint, tuple(int(t) for t in prefix_ids))

    def sync_weights(self, model_identity: Hashable, weights_version: Hashable) -> int:
        """Record ``model_identity``'s current weights version; drops (and returns the number of) its entries
        stored under another version, which can never be hit again."""
        with self._lock:
            if self._versions.get(model_identity, weights_version) == weights_version:
                self._versions[model_identity] = weights_version
                return 0
            self._versions[model_identity] = weights_version
            stale = [
                key
                for key in self._entries
                if isinstance(key, tuple) and len(key) == 4 and key[0] == model_identity and key[1] != weights_version
            ]
            for key in stale:
                _, size = self._entries.pop(key)
                self.stats.bytes -= size
            self.stats.invalidations += len(stale)
            self.stats.entries = len(self._entries)
            return len(stale)

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
        """Drop every entry (changed weights are also detected without it: see ``sync_weights``)."""
        with self._lock:
            self._entries.clear()
            self._versions.clear()
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
