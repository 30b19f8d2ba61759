"""Preallocated key/value cache for every layer, growing in steps, with a batch dimension and rewind."""

from __future__ import annotations

import mlx.core as mx


class KVCache:
    step = 256  # positions added per growth: few reallocations, little waste

    def __init__(self, num_layers: int, batch: int, kv_heads: int, head_dim: int, dtype: mx.Dtype):
        self.batch, self.kv_heads, self.head_dim, self.dtype = batch, kv_heads, head_dim, dtype
        self.keys: list[mx.array | None] = [None] * num_layers  # each (batch, kv_heads, capacity, head_dim)
        self.values: list[mx.array | None] = [None] * num_layers
        self.offset = 0  # positions filled (same for every layer once a forward pass is done)

    @property
    def capacity(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def update(self, layer: int, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Write ``keys``/``values`` (batch, kv_heads, L, head_dim) at the offset; return everything cached so far."""
        start, length = self.offset, keys.shape[2]
        if self.keys[layer] is None or start + length > self.keys[layer].shape[2]:
            self._grow(layer, start + length)
        self.keys[layer][..., start : start + length, :] = keys
        self.values[layer][..., start : start + length, :] = values
        return self.keys[layer][..., : start + length, :], self.values[layer][..., : start + length, :]

    def reserve(self, needed: int) -> None:
        """Make room for ``needed`` positions in every layer (the compiled decode step needs the arrays to exist)."""
        for layer in range(len(self.keys)):
            if self.keys[layer] is None or needed > self.keys[layer].shape[2]:
                self._grow(layer, needed)

    def attention_mask(self, length: int) -> str | None:
        """Queries see the cached positions and themselves: a causal mask over the new ones when there are several."""
        return "causal" if length > 1 else None

    def _grow(self, layer: int, needed: int) -> None:
        capacity = ((needed + self.step - 1) // self.step) * self.step
        shape = (self.batch, self.kv_heads, capacity, self.head_dim)
        new_keys, new_values = mx.zeros(shape, self.dtype), mx.zeros(shape, self.dtype)
        if self.keys[layer] is not None:
            new_keys[..., : self.offset, :] = self.keys[layer][..., : self.offset, :]
            new_values[..., : self.offset, :] = self.values[layer][..., : self.offset, :]
        self.keys[layer], self.values[layer] = new_keys, new_values

    def advance(self, length: int) -> None:
        self.offset += length

    def rewind(self, length: int) -> None:
        """Forget every position from ``length`` on (keeps a shared prompt prefix)."""
        self.offset = min(self.offset, length)

    def repeat(self, batch: int) -> "KVCache":
        """A new cache holding this single-row cache's positions once per row of a batch."""
        assert self.batch == 1
        copy = KVCache(len(self.keys), batch, self.kv_heads, self.head_dim, self.dtype)
        copy.offset = self.offset
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            if k is not None:
                copy.keys[i] = mx.repeat(k, batch, axis=0)
                copy.values[i] = mx.repeat(v, batch, axis=0)
        return copy


class FixedCapacityView:
    """The cache as the compiled one-token decode step sees it: the whole preallocated arrays, written at an offset
    that is an array, and attention masked past it. Every step then has the same shapes, so ``mx.compile`` traces
    once per capacity (a growth every ``KVCache.step`` positions) instead of once per position."""

    def __init__(self, offset: mx.array, keys: list[mx.array], values: list[mx.array]):
        self.offset = offset  # int32 scalar: positions filled before this step
        self.keys, self.values = list(keys), list(values)
        self._mask = mx.arange(self.keys[0].shape[2]) <= offset  # one mask for every layer

    def update(self, layer: int, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        start = self.offset.reshape(1)
        self.keys[layer] = mx.slice_update(self.keys[layer], keys, start, axes=(2,))
        self.values[layer] = mx.slice_update(self.values[layer], values, start, axes=(2,))
        return self.keys[layer], self.values[layer]

    def attention_mask(self, length: int) -> mx.array:
        assert length == 1, "the fixed-capacity view decodes one token per row"
        return self._mask

    def advance(self, length: int) -> None:
        """The owner advances the real cache after the step."""
