"""Preallocated key/value cache for every layer, growing in steps, with a batch dimension and rewind."""

from __future__ import annotations

import mlx.core as mx


class KVCache:
    step = 256  # positions added per growth: few reallocations, little waste
    # Attention on CUDA: MLX runs one-query steps through cuDNN when the cache's capacity is a multiple of 256 (its
    # test for mlx_lm's cache), else through its own vector kernel. At 8B shape on the H100, cuDNN took 0.38 ms a step
    # for one draft against the vector kernel's 0.69, but 1.37 ms for 4 drafts against 0.70 (tools/gpu/kernel_profile.py):
    # so a batch's capacity is kept off multiples of 256.
    batch_padding = 8

    def __init__(self, num_layers: int, batch: int, kv_heads: int, head_dim: int, dtype: mx.Dtype):
        self.batch, self.kv_heads, self.head_dim, self.dtype = batch, kv_heads, head_dim, dtype
        self.padding = 0 if batch == 1 else self.batch_padding
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

    def attention_mask(self, length: int) -> str | None:
        """Queries see the cached positions and themselves: a causal mask over the new ones when there are several."""
        return "causal" if length > 1 else None

    def _grow(self, layer: int, needed: int) -> None:
        capacity = ((needed + self.step - 1) // self.step) * self.step + self.padding
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
                copy._grow(i, self.offset)
                copy.keys[i][..., : self.offset, :] = k[..., : self.offset, :]  # broadcast over the batch
                copy.values[i][..., : self.offset, :] = v[..., : self.offset, :]
        return copy
