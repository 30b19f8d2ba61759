"""The device loop: tokens in, tokens out. No text, no events: ``inference/batching.py`` builds those on top.

``prefill`` runs a prompt through the model a chunk at a time; ``DecodeBatch`` holds the rows decoding together
(their per-layer caches, their sampler, the tokens they feed next) and runs one step at a time, queueing the next
step on the device before reading this one's tokens, so the device stays busy while the host handles them (as
mlx_lm's ``generate_step`` does with ``mx.async_eval``).
"""

from __future__ import annotations

from collections.abc import Iterator

import mlx.core as mx

from .cache import KVCache
from .sampling import BatchSampler, finite_rows

NOT_FINITE = -1  # what a row's token reads as on the host when its logits held a NaN or an infinity


def prefill(model, cache: list[KVCache], tokens: list[int], adapter: str | None, chunk: int) -> Iterator[mx.array]:
    """Feed ``tokens`` (one row) into ``cache``, ``chunk`` tokens per forward pass, evaluating each pass; yields
    after each one, the last yield being the logits (1, V) of the last token."""
    for start in range(0, len(tokens), chunk):
        logits = model(mx.array([tokens[start : start + chunk]]), cache, adapter)
        mx.eval(logits)
        yield logits


class DecodeBatch:
    """Rows decoding in one forward pass per step; rows join with ``extend`` and leave with ``filter``."""

    def __init__(self, model):
        self.model = model
        self.adapters: list[str | None] = []  # each row's (None: the base model)
        self._selection = None  # what the forward pass runs with (model.adapter_for), kept until the rows change
        self.cache: list[KVCache] | None = None
        self.sampler: BatchSampler | None = None
        self.tokens: mx.array | None = None  # (rows,): what each row feeds at the next step (maybe not computed yet)
        self.readout: mx.array | None = None  # the same tokens as the host reads them: NOT_FINITE where broken

    @property
    def rows(self) -> int:
        return 0 if self.sampler is None else len(self.sampler.params)

    def extend(self, cache: list[KVCache], sampler: BatchSampler, logits: mx.array, adapters: list[str | None]
               ) -> None:
        """Rows that finished their prefill: ``cache`` holds their prompts (run with ``adapters``, one per row),
        ``logits`` (rows, V) their last positions'; their first tokens are sampled now and come out of the next
        ``step``."""
        first, readout = self._sample(sampler, logits)
        self._set_adapters(self.adapters + list(adapters) if self.rows else list(adapters))
        if self.rows == 0:
            self.cache, self.sampler, self.tokens, self.readout = cache, sampler, first, readout
        else:
            for layer_cache, joining in zip(self.cache, cache, strict=True):
                layer_cache.extend(joining)
            self.sampler.extend(sampler)
            self.tokens = mx.concatenate([self.tokens, first])
            self.readout = mx.concatenate([self.readout, readout])
        self._queue_readout()

    @staticmethod
    def _sample(sampler: BatchSampler, logits: mx.array) -> tuple[mx.array, mx.array]:
        """The tokens the model is fed (always an id of the vocabulary), and what the host reads of them."""
        tokens = sampler(logits)
        return tokens, mx.where(finite_rows(logits), tokens.astype(mx.int32), NOT_FINITE)

    def _set_adapters(self, adapters: list[str | None]) -> None:
        self.adapters = adapters
        self._selection = self.model.adapter_for(tuple(adapters), len(adapters)) if adapters else None

    def filter(self, rows: list[int]) -> None:
        """Keep only ``rows`` (indices, in the new order)."""
        self._set_adapters([self.adapters[r] for r in rows])
        if not rows:
            self.cache = self.sampler = self.tokens = self.readout = None
            return
        for layer_cache in self.cache:
            layer_cache.filter(rows)
        self.sampler.filter(rows)
        if self.tokens is not None:
            index = mx.array(rows)
            self.tokens, self.readout = self.tokens[index], self.readout[index]
            self._queue_readout()

    def _queue_readout(self) -> None:
        """Queue the rows' changed tokens now: ``step`` queues the next forward pass before it reads them, and read
        after it, they would wait for that whole pass (the device runs its queue in order)."""
        mx.async_eval(self.tokens, self.readout)

    def step(self, queue_next: bool = True) -> list[int]:
        """This step's token of every row (NOT_FINITE for a row whose logits were not finite). With
        ``queue_next``, the next step's forward pass and sampling are queued on the device first (pass False when
        no row will want another token)."""
        tokens, readout = self.tokens, self.readout
        if queue_next:
            logits = self.model.decode(tokens[:, None], self.cache, self._selection)
            self.tokens, self.readout = self._sample(self.sampler, logits)
            mx.async_eval(self.tokens, self.readout)
        else:
            self.tokens = self.readout = None
        return readout.tolist()
