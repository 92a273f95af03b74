"""A decoding KV cache that appends in place instead of re-allocating every step.

transformers' ``DynamicLayer`` grows by ``torch.cat``: every generated token copies the layer's whole KV
into a freshly allocated tensor, so a reply of n tokens moves O(n^2) bytes and, on CPU, each step pays for
large new allocations (page faults included). ``GrowingLayer`` keeps an owned buffer with spare positions
and hands out views of its filled part, so a step writes one position; the buffer grows by an eighth (at
least ``MIN_EXTRA`` positions) when full, which keeps the copying amortised O(1) per token and the slack
small on a GPU. Attention reads the same values either way (tests/test_kv_layers.py).

Views never see later writes. A layer writes only past the length it wrote itself, and only while its
``keys`` are still exactly the view it last returned: a cropped, reset, reordered or offloaded layer, and a
copy made by ``kv_cache.share_cache`` (which owns no buffer), re-allocate before writing. So prefix-cache
snapshots stay valid while the request that made them keeps decoding.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer

__all__ = ["MIN_EXTRA", "GrowingLayer", "new_kv_cache"]

MIN_EXTRA = 128  # spare positions at least, per (re)allocation


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys``/``values`` are views of an owned buffer with spare capacity."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._key_buffer: torch.Tensor | None = None  # (batch, heads, capacity, head_dim)
        self._value_buffer: torch.Tensor | None = None
        self._written = 0  # positions of the buffers this layer filled (its view's length)

    def release(self) -> None:
        """Stop owning the buffers (the views stay readable); the next update copies into new ones."""
        self._key_buffer = self._value_buffer = None
        self._written = 0

    @property
    def capacity(self) -> int:
        """Positions the owned buffer holds (0 when it owns none)."""
        return 0 if self._key_buffer is None else int(self._key_buffer.shape[-2])

    def _owns_view(self) -> bool:
        buffer = self._key_buffer
        return (
            buffer is not None
            and self.is_initialized
            and self.keys.dim() == buffer.dim()
            and self.keys.shape[-2] == self._written
            and self.keys.data_ptr() == buffer.data_ptr()
            and self.values.data_ptr() == self._value_buffer.data_ptr()  # type: ignore[union-attr]
        )

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``key_states``/``value_states`` (batch, heads, new, head_dim); returns the full keys and values."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        needed = length + key_states.shape[-2]
        if not self._owns_view() or needed > self.capacity:
            capacity = needed + max(MIN_EXTRA, needed // 8)
            keys = key_states.new_empty(*key_states.shape[:-2], capacity, key_states.shape[-1])
            values = value_states.new_empty(*value_states.shape[:-2], capacity, value_states.shape[-1])
            if length:
                keys[..., :length, :].copy_(self.keys)
                values[..., :length, :].copy_(self.values)
            self._key_buffer, self._value_buffer = keys, values
        assert self._key_buffer is not None and self._value_buffer is not None
        self._key_buffer[..., length:needed, :].copy_(key_states)
        self._value_buffer[..., length:needed, :].copy_(value_states)
        self.keys = self._key_buffer[..., :needed, :]
        self.values = self._value_buffer[..., :needed, :]
        self._written = needed
        return self.keys, self.values


def new_kv_cache(config: PretrainedConfig) -> DynamicCache:
    """A ``DynamicCache`` for ``config`` whose plain layers are ``GrowingLayer`` (sliding-window layers kept)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
