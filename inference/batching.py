"""Continuous batching: requests join a running batch after their own prefill and leave it, between steps.

All of it runs on the engine's thread. Each ``step()`` (1) lets cancelled rows go, (2) runs one prefill chunk of the
request at the head of the queue when its rows fit (a long prompt so holds the running rows up one chunk at a time),
its rows joining the batch once the prompt is in, and (3) decodes one token for every running row. A request's
drafts share one prefill; the last prompt's cache is kept, so a prompt that shares a prefix with it prefills only
the rest. Rows of different requests are left-padded to one cache (``inference/cache.py``). A finished row stays
in the device batch, its tokens ignored, until the batch next changes shape (a request joins, or one is cancelled).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import mlx.core as mx

from .api import DraftDone, GenerationRequest, GenerationStats, ParameterError, SamplingParams, TokenDelta
from .cache import KVCache
from .errors import InferenceError
from .generation import NOT_FINITE, DecodeBatch, prefill
from .sampling import BatchSampler
from .text import DraftText

if TYPE_CHECKING:
    from .engine import Engine

Event = tuple[int, "TokenDelta | DraftDone"]


class PromptCache:
    """The last prompt's one-row cache, kept so that the next prompt sharing a prefix with it prefills only the rest."""

    def __init__(self, model):
        self.model = model
        self.cache: list[KVCache] | None = None
        self.tokens: list[int] = []  # the prompt being or last prefilled; its first cache[0].offset are in the cache
        self.use_lora = False

    def start(self, tokens: list[int], use_lora: bool) -> tuple[list[KVCache], int]:
        """The cache to prefill ``tokens`` into, and how many of them it already holds (at least one is left to
        run, for its logits). A cache made with the adapter switched otherwise is not reused."""
        reused = 0
        if self.cache is None or self.use_lora != use_lora:
            self.cache = self.model.new_cache(1)
        else:
            limit = min(len(tokens) - 1, self.cache[0].offset)
            while reused < limit and self.tokens[reused] == tokens[reused]:
                reused += 1
            for layer_cache in self.cache:
                layer_cache.trim(layer_cache.offset - reused)
        self.tokens, self.use_lora = tokens, use_lora
        return self.cache, reused


@dataclass
class _Request:
    id: int
    request: GenerationRequest
    prompt: list[int]
    params: list[SamplingParams]  # resolved: each with its seed
    use_lora: bool
    texts: list[DraftText]
    prefill: Iterator[mx.array] | None = None  # while its prompt is being run
    prefill_s: float = 0.0
    decode_started: float = 0.0
    open_drafts: set[int] = field(default_factory=set)


@dataclass
class _Row:
    request: _Request
    draft: int
    done: bool = False  # finished: still in the device batch (its tokens ignored) until the batch is compacted


class BatchGenerator:
    """Runs many requests' drafts in one batch on the engine's thread; see the module docstring."""

    def __init__(self, engine: Engine, max_rows: int = 32):
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be a positive integer (got {max_rows!r})")
        self.engine, self.max_rows = engine, max_rows
        self._next_id = 0
        self._waiting: deque[_Request] = deque()  # the head may be prefilling
        self._rows: list[_Row] = []  # the running batch's rows, in its order
        self._batch: DecodeBatch | None = None
        self._cancelled: set[int] = set()
        self._requests: dict[int, _Request] = {}  # every request not yet done

    @property
    def has_work(self) -> bool:
        return bool(self._requests)

    @property
    def active_rows(self) -> int:
        """Rows decoding for a draft that is not done."""
        return sum(not row.done for row in self._rows)

    def submit(self, request: GenerationRequest) -> int:
        """Queue a request; its rows (one per draft) join the running batch after its prefill. -> its id."""
        engine = self.engine
        engine._check_thread()
        if not request.drafts:
            raise ParameterError("a request needs at least one draft")
        if len(request.drafts) > self.max_rows:
            raise ParameterError(f"{len(request.drafts)} drafts do not fit a batch of {self.max_rows} rows")
        if not all(isinstance(p, SamplingParams) for p in request.drafts):
            raise ParameterError("each draft's parameters must be SamplingParams")
        if isinstance(request.max_tokens, bool) or not isinstance(request.max_tokens, int) or request.max_tokens < 0:
            raise ParameterError(f"max_tokens must be an integer >= 0 (got {request.max_tokens!r})")
        prompt = engine.tokenizer.encode(request.prompt)
        if not prompt:
            raise ValueError("the prompt is empty")
        context = engine.model.config.max_position_embeddings
        if len(prompt) + request.max_tokens > context:
            raise ParameterError(f"the prompt ({len(prompt)} tokens) and max_tokens ({request.max_tokens}) exceed "
                                 f"the model's context of {context} positions")
        request_id, self._next_id = self._next_id, self._next_id + 1
        params = [p.resolved() for p in request.drafts]
        entry = _Request(request_id, request, prompt, params, engine.adapter_enabled,
                         [DraftText(engine.tokenizer, request.stop_strings) for _ in params],
                         open_drafts=set(range(len(params))))
        self._waiting.append(entry)
        self._requests[request_id] = entry
        return request_id

    def cancel(self, request_id: int) -> None:
        """The request's rows leave before the next step, whose events end each of its drafts as "cancelled".
        A request that is done (or unknown) is left alone."""
        if request_id in self._requests:
            self._cancelled.add(request_id)

    def step(self) -> list[Event]:
        """Cancelled rows leave, one prefill chunk runs, every running row decodes one token: -> (request id, event)
        pairs, ``TokenDelta.draft`` / ``DraftDone.draft`` indexing the request's own drafts. Logits that are not
        finite (broken weights) raise InferenceError."""
        self.engine._check_thread()
        events: list[Event] = []
        if self._cancelled:
            self._drop_cancelled(events)
        self._advance_prefill(events)
        if self._rows:
            self._decode(events)
        return events

    # --- the steps ----------------------------------------------------------------------------------------------
    def _drop_cancelled(self, events: list[Event]) -> None:
        cancelled, self._cancelled = self._cancelled, set()
        for entry in [e for e in self._waiting if e.id in cancelled]:
            self._waiting.remove(entry)
            for draft in sorted(entry.open_drafts):
                self._finish(entry, draft, "cancelled", events)
        for row in self._rows:
            if row.request.id in cancelled and not row.done:
                row.done = True
                self._finish(row.request, row.draft, "cancelled", events)
        self._compact()

    def _advance_prefill(self, events: list[Event]) -> None:
        if not self._waiting:
            return
        entry = self._waiting[0]
        if entry.prefill is None:  # not started: only when its rows fit the batch now
            fits = self.active_rows + len(entry.params) <= self.max_rows
            same_adapter = self.active_rows == 0 or self._batch.use_lora == entry.use_lora
            if not (fits and same_adapter):
                return
            cache, reused = self.engine.prompt_cache.start(entry.prompt, entry.use_lora)
            entry.prefill = prefill(self.engine.model, cache, entry.prompt[reused:], entry.use_lora,
                                    self.engine.model.options.prefill_chunk)
        started = time.perf_counter()
        logits = next(entry.prefill)
        entry.prefill_s += time.perf_counter() - started
        cache = self.engine.prompt_cache.cache
        if cache[0].offset < len(entry.prompt):
            return
        self._waiting.popleft()
        self._join(entry, cache, logits, events)

    def _join(self, entry: _Request, prompt_cache: list[KVCache], logits: mx.array, events: list[Event]) -> None:
        """The request's prompt is in: its rows join the batch, their first tokens sampled from ``logits``."""
        n = len(entry.params)
        if entry.request.max_tokens == 0:
            entry.decode_started = time.perf_counter()
            for draft in range(n):
                self._finish(entry, draft, "length", events)
            return
        self._compact()  # the batch changes shape anyway: finished rows go now
        if not self._rows:
            self._batch = DecodeBatch(self.engine.model, entry.use_lora)
        self._batch.extend([c.repeat(n) for c in prompt_cache], BatchSampler(entry.params, [entry.prompt] * n),
                           mx.repeat(logits, n, axis=0) if n > 1 else logits)
        entry.decode_started = time.perf_counter()
        self._rows += [_Row(entry, draft) for draft in range(n)]

    def _decode(self, events: list[Event]) -> None:
        eos = self.engine.eos_token_ids
        wants_more = any(row.request.texts[row.draft].generated + 1 < row.request.request.max_tokens
                         for row in self._rows if not row.done)
        tokens = self._batch.step(queue_next=wants_more)
        for row, token in zip(self._rows, tokens):
            if row.done:
                continue
            if token == NOT_FINITE:
                raise InferenceError(self.engine.model_dir, "the model computed logits that are not finite (NaN or "
                                     "infinity): its weights or config.json are broken")
            entry, text = row.request, row.request.texts[row.draft]
            delta = text.finish("stop") if token in eos else text.push(token)
            if text.finish_reason is None and text.generated >= entry.request.max_tokens:
                delta += text.finish("length")
            if delta:
                events.append((entry.id, TokenDelta(row.draft, delta)))
            if text.finish_reason is not None:
                row.done = True
                self._done(entry, row.draft, events)
        if not self.active_rows:
            self._rows, self._batch = [], None

    # --- bookkeeping --------------------------------------------------------------------------------------------
    def _compact(self) -> None:
        """Drop finished rows from the device batch. Done only when a request joins or leaves by cancellation: a
        row finishing by itself stays (its tokens ignored), because every new batch shape compiles new kernels on
        a GPU, and drafts of one request finish one by one."""
        keep = [i for i, row in enumerate(self._rows) if not row.done]
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        if keep:
            self._batch.filter(keep)
        else:
            self._batch = None

    def _finish(self, entry: _Request, draft: int, reason: str, events: list[Event]) -> None:
        """End a draft that has not ended by itself: what its text held back comes out, then its DraftDone."""
        delta = entry.texts[draft].finish(reason)
        if delta:
            events.append((entry.id, TokenDelta(draft, delta)))
        self._done(entry, draft, events)

    def _done(self, entry: _Request, draft: int, events: list[Event]) -> None:
        text = entry.texts[draft]
        decode_s = max(text.finished_at - entry.decode_started, 1e-9)
        stats = GenerationStats(
            prompt_tokens=len(entry.prompt),
            generated_tokens=text.generated,
            prefill_tok_s=len(entry.prompt) / entry.prefill_s if entry.prefill_s > 0 else 0.0,
            decode_tok_s=text.generated / decode_s if entry.decode_started else 0.0,
            peak_memory_bytes=mx.get_peak_memory(),
        )
        events.append((entry.id, DraftDone(draft, text.text, text.finish_reason, entry.params[draft], stats)))
        entry.open_drafts.discard(draft)
        if not entry.open_drafts:
            del self._requests[entry.id]
            self._cancelled.discard(entry.id)
