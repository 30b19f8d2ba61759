"""Token sampling for a batch of rows, each with its own parameters and random stream.

The filters are small pure functions over (B, V) log-probabilities and per-row (B, 1) parameters, each returning
the mask of the tokens it cuts; ``BatchSampler`` combines them for the rows of a running batch, and takes rows in
(``extend``) and out (``filter``) as the batch changes. Parameters are validated once, in ``SamplingParams``.
"""

from __future__ import annotations

import mlx.core as mx

from .api import SamplingParams

REPETITION_CONTEXT = 20  # tokens looked back at by the repetition penalty (mlx_lm's default)


def penalize_repetitions(logits: mx.array, recent: mx.array, penalty: mx.array) -> mx.array:
    """Scale down the logits of each row's recent tokens (B, W) by its penalty (B, 1), as mlx_lm does: negative
    logits are multiplied, positive ones divided. A token listed twice is penalized once."""
    selected = mx.take_along_axis(logits, recent, axis=-1)
    selected = mx.where(selected < 0, selected * penalty, selected / penalty)
    return mx.put_along_axis(logits, recent, selected, axis=-1)


def top_k_cut(logprobs: mx.array, ordered: mx.array, top_k: mx.array) -> mx.array:
    """Tokens outside each row's ``top_k`` (B, 1) most likely; ``ordered`` is ``logprobs`` sorted descending.
    0, or a k beyond the vocabulary, keeps every token (the index never leaves the row)."""
    vocab = logprobs.shape[-1]
    kth = mx.where((top_k > 0) & (top_k < vocab), top_k, vocab) - 1
    return logprobs < mx.take_along_axis(ordered, kth, axis=-1)


def top_p_cut(logprobs: mx.array, ordered: mx.array, top_p: mx.array) -> mx.array:
    """Tokens outside the smallest set of most likely ones whose mass reaches ``top_p`` (the token that crosses it
    is kept)."""
    probs = mx.exp(ordered)
    kept = ((mx.cumsum(probs, axis=-1) - probs) < top_p) | (top_p >= 1.0)
    smallest_kept = mx.min(mx.where(kept, ordered, mx.inf), axis=-1, keepdims=True)
    return logprobs < smallest_kept


def min_p_cut(logprobs: mx.array, min_p: mx.array) -> mx.array:
    """Tokens less likely than ``min_p`` times the row's most likely token."""
    return logprobs < mx.max(logprobs, axis=-1, keepdims=True) + mx.log(min_p)


def gumbel_max(logprobs: mx.array, keys: list[mx.array]) -> tuple[mx.array, list[mx.array]]:
    """One draw from each row's softmax(logprobs), row i from its own key -> (tokens (B,), the keys split on)."""
    noise, next_keys = [], []
    for key in keys:
        key, sub = mx.random.split(key)
        next_keys.append(key)
        noise.append(mx.random.gumbel(shape=logprobs.shape[-1:], key=sub))
    return mx.argmax(logprobs + mx.stack(noise), axis=-1), next_keys


def finite_rows(logits: mx.array) -> mx.array:
    """(B,) bool: whether each row's logits are all finite (a NaN or an infinity makes its maximum non-finite)."""
    return mx.isfinite(mx.max(logits, axis=-1))


def _column(values: list[float]) -> mx.array:
    return mx.array(values, dtype=mx.float32)[:, None]  # (B, 1)


class BatchSampler:
    """Picks one token per row of a (B, V) logits array. Row i draws only from its own seeded key, so a draft
    samples the same tokens whether it runs alone or in a batch."""

    def __init__(self, params: list[SamplingParams], prompt_tails: list[list[int]]):
        """``params[i]``: row i's parameters (resolved: with a seed); ``prompt_tails[i]``: its prompt (the tail is
        what the repetition penalty first looks back at)."""
        self.params = list(params)
        self.keys = [mx.random.key(p.seed) for p in params]
        # Each row's window holds exactly REPETITION_CONTEXT entries: a shorter history is padded on the left with
        # copies of its first token, which the penalty counts once (and which slide out first). Windows move only
        # while some row is penalized; a row without a penalty (1.0: an exact no-op) may keep a stale one.
        windows = []
        for tail in prompt_tails:
            tail = tail[-REPETITION_CONTEXT:]
            windows.append([tail[0]] * (REPETITION_CONTEXT - len(tail)) + tail)
        self.recent = mx.array(windows, dtype=mx.int32) if params else None
        self._columns()

    def _columns(self) -> None:
        """The per-row parameter columns; a filter no row uses is skipped."""
        params = self.params
        self.temperature = _column([p.temperature for p in params])
        self.any_sampled = any(p.temperature > 0 for p in params)
        self.top_p = _column([p.top_p for p in params]) if any(p.top_p < 1.0 for p in params) else None
        self.top_k = mx.array([p.top_k for p in params])[:, None] if any(p.top_k > 0 for p in params) else None
        self.min_p = _column([p.min_p for p in params]) if any(p.min_p > 0 for p in params) else None
        penalized = any(p.repetition_penalty != 1.0 for p in params)
        self.penalty = _column([p.repetition_penalty for p in params]) if penalized else None

    def __call__(self, logits: mx.array) -> mx.array:
        """logits (B, V) float32 -> tokens (B,) uint32; the chosen tokens enter the repetition windows."""
        if self.penalty is not None:
            logits = penalize_repetitions(logits, self.recent, self.penalty)
        tokens = mx.argmax(logits, axis=-1)
        if self.any_sampled:
            logprobs = self._filter(logits / mx.where(self.temperature > 0, self.temperature, 1.0))
            sampled, self.keys = gumbel_max(logprobs, self.keys)
            tokens = mx.where(self.temperature[:, 0] > 0, sampled, tokens)
        tokens = tokens.astype(mx.uint32)
        if self.penalty is not None:
            column = tokens.astype(mx.int32)[:, None]
            self.recent = mx.concatenate([self.recent, column], axis=1)[:, -REPETITION_CONTEXT:]
        return tokens

    def _filter(self, logits: mx.array) -> mx.array:
        """Temperature-scaled logits -> log-probabilities with the top-k, top-p and min-p cut-offs set to -inf."""
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        cut = mx.zeros(logprobs.shape, dtype=mx.bool_)
        if self.top_k is not None or self.top_p is not None:
            ordered = -mx.sort(-logprobs, axis=-1)  # descending
            if self.top_k is not None:
                cut = cut | top_k_cut(logprobs, ordered, self.top_k)
            if self.top_p is not None:
                cut = cut | top_p_cut(logprobs, ordered, self.top_p)
        if self.min_p is not None:
            cut = cut | min_p_cut(logprobs, self.min_p)
        return mx.where(cut, -mx.inf, logprobs)

    def extend(self, other: BatchSampler) -> None:
        """Append ``other``'s rows (their keys and windows as they are)."""
        self.params += other.params
        self.keys += other.keys
        self.recent = other.recent if self.recent is None else mx.concatenate([self.recent, other.recent], axis=0)
        self._columns()

    def filter(self, rows: list[int]) -> None:
        """Keep only ``rows`` (indices, in the new order)."""
        self.params = [self.params[r] for r in rows]
        self.keys = [self.keys[r] for r in rows]
        self.recent = self.recent[mx.array(rows)] if rows else None
        self._columns()
