"""Key/value caches: one ``KVCache`` per layer, preallocated and grown in steps, with a batch dimension whose rows
may hold prompts of different lengths.

Rows are left-padded: every row writes at the same index (``offset``), and row r's own tokens start at
``left_padding[r]``. Its positions (for RoPE) are therefore ``offset - left_padding[r]``, and a mask hides the padding
from attention. A batch whose rows all start at 0 (one prompt's drafts) needs neither: its positions are one number
and its one-token steps take no mask, as a single row's do. ``extend`` takes in the rows of another cache (a new
request, after its own prefill) and ``filter`` drops finished rows, both between steps.
"""

from __future__ import annotations

import mlx.core as mx


class KVCache:
    step = 256  # positions added per growth: few reallocations, little waste
    # Attention on CUDA: MLX runs one-query steps through cuDNN when the cache's capacity is a multiple of 256 (its
    # test for mlx_lm's cache), else through its own vector kernel. At 8B shape on the H100, cuDNN took 0.38 ms a step
    # for one draft against the vector kernel's 0.69, but 1.37 ms for 4 drafts against 0.70
    # (tools/gpu/kernel_profile.py):
    # so a batch's capacity is kept off multiples of 256.
    batch_padding = 8

    def __init__(self, batch: int, kv_heads: int, head_dim: int, dtype: mx.Dtype,
                 left_padding: list[int] | None = None):
        self.batch, self.kv_heads, self.head_dim, self.dtype = batch, kv_heads, head_dim, dtype
        self.keys: mx.array | None = None  # (batch, kv_heads, capacity, head_dim)
        self.values: mx.array | None = None
        self.offset = 0  # positions written, the same for every row (padding included)
        self.left_padding = list(left_padding) if left_padding is not None else [0] * batch

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    @property
    def padded(self) -> bool:
        """Whether rows start at different positions (then attention needs a mask and RoPE per-row offsets)."""
        return any(self.left_padding)

    def lengths(self) -> list[int]:
        """Each row's own positions: its tokens so far."""
        return [self.offset - p for p in self.left_padding]

    def positions(self) -> int | mx.array:
        """Where the next token of each row sits: one number when rows agree, else an int32 array (batch,)."""
        if not self.padded:
            return self.offset
        return mx.array(self.lengths(), dtype=mx.int32)

    def make_mask(self, length: int) -> str | mx.array | None:
        """The attention mask for ``length`` new queries: none for one query, "causal" for several, and a boolean
        (batch, 1, length, offset + length) array that also hides each row's left padding when there is any."""
        if not self.padded:
            return "causal" if length > 1 else None
        keys = mx.arange(self.offset + length)
        mask = mx.array(self.left_padding)[:, None, None, None] <= keys
        if length > 1:
            # a padding query (prompts prefilled together, left-padded) sees itself, so no query row is masked whole
            # (what fills such a row is each backend's own choice); the padding's keys stay masked for real queries
            queries = mx.arange(self.offset, self.offset + length)[:, None]
            mask = (mask | (queries == keys)) & (queries >= keys)
        return mask

    def _capacity_for(self, needed: int) -> int:
        return ((needed + self.step - 1) // self.step) * self.step + (0 if self.batch == 1 else self.batch_padding)

    def _store(self, keys: mx.array | None, values: mx.array | None, start: int = 0) -> None:
        """New storage for ``offset`` positions, holding ``keys``/``values`` at positions ``start`` onwards."""
        shape = (self.batch, self.kv_heads, self._capacity_for(max(self.offset, 1)), self.head_dim)
        new_keys, new_values = mx.zeros(shape, self.dtype), mx.zeros(shape, self.dtype)
        if keys is not None:
            new_keys[..., start : start + keys.shape[2], :] = keys
            new_values[..., start : start + values.shape[2], :] = values
        self.keys, self.values = new_keys, new_values

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Write ``keys``/``values`` (batch, kv_heads, L, head_dim) at the offset and advance it by L; return
        everything cached so far."""
        start, length = self.offset, keys.shape[2]
        if self.keys is None or start + length > self.capacity:
            old = (self.keys[..., :start, :], self.values[..., :start, :]) if self.keys is not None else (None, None)
            self.offset = start + length
            self._store(*old)
        self.offset = start + length
        self.keys[..., start : self.offset, :] = keys
        self.values[..., start : self.offset, :] = values
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]

    def trim(self, count: int) -> int:
        """Forget the last ``count`` positions (a shared prompt prefix stays); returns how many were forgotten."""
        count = min(self.offset, count)
        self.offset -= count
        return count

    def repeat(self, batch: int) -> KVCache:
        """A new cache holding this single-row cache's positions once per row of a batch."""
        assert self.batch == 1
        copy = KVCache(batch, self.kv_heads, self.head_dim, self.dtype, self.left_padding * batch)
        copy.offset = self.offset
        if self.keys is not None:
            copy._store(self.keys[..., : self.offset, :], self.values[..., : self.offset, :])  # broadcast over rows
        return copy

    def prefix(self, length: int) -> KVCache:
        """A new single-row cache holding this one's first ``length`` positions (this one is left as it is)."""
        assert self.batch == 1 and length <= self.offset
        copy = KVCache(1, self.kv_heads, self.head_dim, self.dtype)
        copy.offset = length
        if self.keys is not None and length:
            copy._store(self.keys[..., :length, :], self.values[..., :length, :])
        return copy

    def filter(self, rows: list[int]) -> None:
        """Keep only ``rows`` (indices, in the new order); padding every kept row has in common is cut off."""
        shift = min((self.left_padding[r] for r in rows), default=0)
        live = None
        if self.keys is not None and rows:
            index = mx.array(rows)
            live = (self.keys[index][..., shift : self.offset, :], self.values[index][..., shift : self.offset, :])
        self.batch, self.offset = len(rows), self.offset - shift if rows else 0
        self.left_padding = [self.left_padding[r] - shift for r in rows]
        if live is None:
            self.keys = self.values = None
        else:
            self._store(*live)

    def extend(self, other: KVCache) -> None:
        """Append ``other``'s rows; the side with fewer positions is padded on the left so both write at one offset."""
        offset = max(self.offset, other.offset)
        pieces = []  # (first row, keys, values, where they start)
        for first_row, cache in ((0, self), (self.batch, other)):
            if cache.batch and cache.keys is not None and cache.offset:
                pieces.append((first_row, cache.keys[..., : cache.offset, :], cache.values[..., : cache.offset, :],
                               offset - cache.offset))
        self.left_padding = ([p + offset - self.offset for p in self.left_padding]
                             + [p + offset - other.offset for p in other.left_padding])
        self.batch, self.offset = self.batch + other.batch, offset
        self._store(None, None)
        for first_row, keys, values, start in pieces:
            rows = slice(first_row, first_row + keys.shape[0])
            self.keys[rows, :, start:offset, :] = keys
            self.values[rows, :, start:offset, :] = values
