"""Token sampling for a batch of drafts, each with its own parameters and random stream."""

from __future__ import annotations

import mlx.core as mx

from .api import SamplingParams

REPETITION_CONTEXT = 20  # tokens looked back at by the repetition penalty (mlx_lm's default)


class BatchSampler:
    """Picks one token per row of a (B, V) logits array. Row i draws only from its own seeded key, so a draft
    samples the same tokens whether it runs alone or in a batch."""

    def __init__(self, params: list[SamplingParams], prompt_tail: list[int]):
        self.params = params
        column = lambda values: mx.array(values, dtype=mx.float32)[:, None]  # noqa: E731  (B, 1)
        self.temperature = column([p.temperature for p in params])
        self.any_sampled = any(p.temperature > 0 for p in params)
        self.top_p = column([p.top_p for p in params]) if any(p.top_p < 1.0 for p in params) else None
        self.top_k = [p.top_k for p in params] if any(p.top_k > 0 for p in params) else None
        self.min_p = column([p.min_p for p in params]) if any(p.min_p > 0 for p in params) else None
        self.penalty = column([p.repetition_penalty for p in params]) if any(p.repetition_penalty != 1.0 for p in params) else None
        self.keys = [mx.random.key(p.seed) for p in params]
        tail = prompt_tail[-REPETITION_CONTEXT:]
        self.recent = mx.array([tail] * len(params), dtype=mx.int32) if self.penalty is not None and tail else None

    def __call__(self, logits: mx.array) -> mx.array:
        """logits (B, V) float32 -> tokens (B,) uint32."""
        if self.recent is not None:
            logits = self._penalize(logits)
        greedy = mx.argmax(logits, axis=-1)
        if not self.any_sampled:
            return greedy.astype(mx.uint32)
        logprobs = self._filter(logits / mx.where(self.temperature > 0, self.temperature, 1.0))
        noise = []
        for i, key in enumerate(self.keys):
            self.keys[i], sub = mx.random.split(key)
            noise.append(mx.random.gumbel(shape=logits.shape[-1:], key=sub))
        sampled = mx.argmax(logprobs + mx.stack(noise), axis=-1)  # Gumbel-max: a draw from softmax(logprobs)
        return mx.where(self.temperature[:, 0] > 0, sampled, greedy).astype(mx.uint32)

    def _penalize(self, logits: mx.array) -> mx.array:
        selected = mx.take_along_axis(logits, self.recent, axis=-1)
        selected = mx.where(selected < 0, selected * self.penalty, selected / self.penalty)
        return mx.put_along_axis(logits, self.recent, selected, axis=-1)

    def _filter(self, logits: mx.array) -> mx.array:
        """Temperature-scaled logits -> log-probabilities with top-k, top-p and min-p cut-offs set to -inf."""
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        cut = mx.zeros(logprobs.shape, dtype=mx.bool_)
        if self.top_k is not None or self.top_p is not None:
            ordered = -mx.sort(-logprobs, axis=-1)  # descending
            if self.top_k is not None:
                kth = mx.array([(k if k > 0 else logprobs.shape[-1]) - 1 for k in self.top_k])[:, None]
                cut = cut | (logprobs < mx.take_along_axis(ordered, kth, axis=-1))
            if self.top_p is not None:
                probs = mx.exp(ordered)
                # keep the smallest set of top tokens whose mass reaches top_p (the token that crosses it included)
                kept = ((mx.cumsum(probs, axis=-1) - probs) < self.top_p) | (self.top_p >= 1.0)
                smallest_kept = mx.min(mx.where(kept, ordered, mx.inf), axis=-1, keepdims=True)
                cut = cut | (logprobs < smallest_kept)
        if self.min_p is not None:
            cut = cut | (logprobs < mx.max(logprobs, axis=-1, keepdims=True) + mx.log(self.min_p))
        return mx.where(cut, -mx.inf, logprobs)

    def observe(self, tokens: mx.array) -> None:
        """Slide the repetition window over the tokens just chosen."""
        if self.penalty is not None:
            column = tokens.astype(mx.int32)[:, None]
            self.recent = column if self.recent is None else mx.concatenate([self.recent, column], axis=1)[:, -REPETITION_CONTEXT:]
