"""Continuous batching: requests join a running batch after their own prefill and leave it, between steps.

All of it runs on the engine's thread. Each ``step()`` (1) lets cancelled rows go, (2) runs one prefill chunk of the
request at the head of the queue when its rows fit (a long prompt so holds the running rows up one chunk at a time),
its rows joining the batch once the prompt is in, and (3) decodes one token for every running row. Short prompts
waiting together (clients arriving at once) prefill in one forward pass, left-padded to one length. A request's
drafts share one prefill per adapter they use; recent prompts' caches are kept (``PromptCache``), so a prompt that
shares a prefix with one prefills only the rest. Rows may run with different adapters (``GenerationRequest.adapters``,
``models.base.RowAdapters``). Rows of different requests are left-padded to one cache (``inference/cache.py``). A
finished row stays in the device batch, its tokens ignored, until the batch next changes shape (a request joins, or
one is cancelled).
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


@dataclass
class _CachedPrompt:
    adapter: str | None  # the keys and values depend on the adapter (its updates of k and v)
    tokens: list[int]  # the prompt being or last prefilled; its first cache[0].offset are in the cache
    cache: list[KVCache]


def _shared_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


class PromptCache:
    """Recent prompts' one-row caches, one per prompt and adapter (at most ``max_entries``, the least recently used
    dropped first): a prompt that shares a prefix with one of them prefills only the rest. A refinement (the
    conversation so far, then a new user turn) so prefills only what follows the part of its prompt that the
    earlier prompt rendered identically.

    The rule: a prompt of n tokens whose longest common token prefix with the cached prompts of its adapter is p
    prefills ``n - min(p, n - 1)`` tokens (at least one runs, for its logits), as long as that prompt is among the
    ``max_entries`` most recently used and was not dropped for memory (``max_kept_positions``). The cached prompt is
    what was prefilled, not the draft generated after it: Qwen3's template renders an earlier assistant turn without
    the empty think block its generation prompt had, so a draft's own tokens never recur at the same positions
    there."""

    def __init__(self, model, max_entries: int = 4, max_kept_positions: int = 8192):
        """``max_kept_positions``: the positions the entries other than the latest may hold together (the latest
        is always kept, as long as its prompt); older ones go first past it, so memory stays near one prompt's."""
        self.model, self.max_entries, self.max_kept_positions = model, max_entries, max_kept_positions
        self.entries: list[_CachedPrompt] = []  # least recently used first

    def _best(self, tokens: list[int], adapter: str | None) -> tuple[_CachedPrompt | None, int]:
        best, reused = None, 0
        for entry in self.entries:
            if entry.adapter == adapter:
                shared = _shared_prefix(entry.tokens, tokens, min(len(tokens) - 1, entry.cache[0].offset))
                if shared > reused:
                    best, reused = entry, shared
        return best, reused

    def reusable(self, tokens: list[int], adapter: str | None) -> int:
        """How many of ``tokens`` a ``start`` now would find cached (nothing changes)."""
        return self._best(tokens, adapter)[1]

    def start(self, tokens: list[int], adapter: str | None) -> tuple[list[KVCache], int]:
        """The cache to prefill ``tokens`` into, and how many of them it already holds. A cached prompt that
        ``tokens`` extends (or repeats) is prefilled further in place; one it leaves part-way is left as it is and
        its shared prefix copied into a new entry, so a re-roll of an earlier prompt still finds it."""
        best, reused = self._best(tokens, adapter)
        if best is not None and best.tokens[: best.cache[0].offset] == tokens[: best.cache[0].offset]:
            self.entries.remove(best)
            for layer_cache in best.cache:
                layer_cache.trim(layer_cache.offset - reused)
            best.tokens = tokens
        else:
            cache = [c.prefix(reused) for c in best.cache] if best is not None else self.model.new_cache(1)
            best = _CachedPrompt(adapter, tokens, cache)
            if len(self.entries) >= self.max_entries:
                self.entries.pop(0)
        self.entries.append(best)
        while len(self.entries) > 1 and sum(e.cache[0].capacity for e in self.entries[:-1]) > self.max_kept_positions:
            self.entries.pop(0)
        return best.cache, reused

    def forget(self, adapter: str) -> None:
        """Drop the caches made with ``adapter`` (reloaded: its keys and values changed)."""
        self.entries = [e for e in self.entries if e.adapter != adapter]


@dataclass
class _Request:
    id: int
    request: GenerationRequest
    prompt: list[int]
    params: list[SamplingParams]  # resolved: each with its seed
    adapters: list[str | None]  # each draft's
    texts: list[DraftText]
    groups: deque[tuple[str | None, list[int]]]  # drafts not yet prefilled, by adapter: each group prefills once
    prefilled: list[int]  # each draft's prompt tokens computed (the rest came from the prompt cache)
    prefill: Iterator[mx.array] | None = None  # while the first group's prompt is being run
    cache: list[KVCache] | None = None  # the cache it runs into
    prefill_s: float = 0.0
    computed: int = 0  # prompt tokens run over all its groups (for the prefill speed)
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
        adapters = self._draft_adapters(request)
        request_id, self._next_id = self._next_id, self._next_id + 1
        params = [p.resolved() for p in request.drafts]
        groups: dict[str | None, list[int]] = {}
        for draft, adapter in enumerate(adapters):
            groups.setdefault(adapter, []).append(draft)
        entry = _Request(request_id, request, prompt, params, adapters,
                         [DraftText(engine.tokenizer, request.stop_strings) for _ in params],
                         deque(groups.items()), [0] * len(params), open_drafts=set(range(len(params))))
        self._waiting.append(entry)
        self._requests[request_id] = entry
        return request_id

    def _draft_adapters(self, request: GenerationRequest) -> list[str | None]:
        engine, n = self.engine, len(request.drafts)
        if request.adapters is None:
            return [engine.current_adapter] * n
        if not isinstance(request.adapters, (tuple, list)) or len(request.adapters) != n:
            raise ParameterError(f"adapters must give one adapter name (or None) per draft: {n}")
        for name in request.adapters:
            if name is not None and name not in engine.adapters:
                loaded = ", ".join(engine.adapters) or "none"
                raise ParameterError(f"no adapter named {name!r} is loaded (loaded: {loaded})")
        return list(request.adapters)

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
        together = self._prefill_together()
        if len(together) > 1:
            self._prefill_batch(together, events)
            return
        entry = self._waiting[0]
        if entry.prefill is None:  # the next adapter's prefill: only when the request's remaining rows fit now
            if self.active_rows + sum(len(drafts) for _, drafts in entry.groups) > self.max_rows:
                return
            adapter, drafts = entry.groups[0]
            entry.cache, reused = self.engine.prompt_cache.start(entry.prompt, adapter)
            for draft in drafts:
                entry.prefilled[draft] = len(entry.prompt) - reused
            entry.computed += len(entry.prompt) - reused
            entry.prefill = prefill(self.engine.model, entry.cache, entry.prompt[reused:], adapter,
                                    self.engine.model.options.prefill_chunk)
        started = time.perf_counter()
        logits = next(entry.prefill)
        entry.prefill_s += time.perf_counter() - started
        if entry.cache[0].offset < len(entry.prompt):
            return
        adapter, drafts = entry.groups.popleft()
        entry.prefill = None
        if not entry.groups:
            self._waiting.popleft()
        self._join_one(entry, drafts, adapter, logits, events)

    def _prefill_together(self) -> list[_Request]:
        """The requests at the head of the queue that can prefill in one forward pass, left-padded to one length:
        not started, one adapter (the same), a prompt of at most one chunk of which the prompt cache holds less
        than half, and rows that fit now. A request that finds at least half its prompt cached (a refinement, a
        re-roll) prefills alone, the rest of it only. Less is not worth a pass of its own: every prompt shares the
        chat template's opening tokens with the cached ones, and clients that arrive at once would otherwise
        prefill one per step, each waiting for all those before it."""
        together: list[_Request] = []
        rows, chunk = self.active_rows, self.engine.model.options.prefill_chunk
        for entry in self._waiting:
            if entry.prefill is not None or len(entry.groups) != 1 or entry.request.max_tokens == 0:
                break
            adapter, drafts = entry.groups[0]
            if (together and adapter != together[0].groups[0][0]) or len(entry.prompt) > chunk \
                    or rows + len(drafts) > self.max_rows \
                    or 2 * self.engine.prompt_cache.reusable(entry.prompt, adapter) >= len(entry.prompt):
                break
            together.append(entry)
            rows += len(drafts)
        return together

    def _prefill_batch(self, entries: list[_Request], events: list[Event]) -> None:
        """Prompts of ``entries`` in one forward pass, each row left-padded to the longest; their rows join the
        batch. Their caches are not kept for reuse (the prompt cache holds prompts prefilled alone)."""
        adapter = entries[0].groups[0][0]
        longest = max(len(entry.prompt) for entry in entries)
        padding = [longest - len(entry.prompt) for entry in entries]
        cache = self.engine.model.new_cache(len(entries), padding)
        tokens = mx.array([[0] * pad + entry.prompt for entry, pad in zip(entries, padding, strict=True)])
        started = time.perf_counter()
        logits = self.engine.model(tokens, cache, adapter)
        mx.eval(logits)
        elapsed = time.perf_counter() - started
        members, rows = [], []
        for i, entry in enumerate(entries):
            _, drafts = entry.groups.popleft()
            self._waiting.popleft()
            entry.prefill_s += elapsed
            entry.computed += len(entry.prompt)
            for draft in drafts:
                entry.prefilled[draft] = len(entry.prompt)
            members.append((entry, drafts))
            rows += [i] * len(drafts)
        if len(rows) > len(entries):  # requests of several drafts: a row each
            for layer_cache in cache:
                layer_cache.filter(rows)
            logits = logits[mx.array(rows)]
        self._join(members, cache, logits, adapter, events)

    def _join_one(self, entry: _Request, drafts: list[int], adapter: str | None, logits: mx.array,
                  events: list[Event]) -> None:
        """The prompt is in ``entry.cache`` (one row) with ``adapter``: the rows of ``drafts`` join the batch,
        their first tokens sampled from ``logits``."""
        n = len(drafts)
        if entry.request.max_tokens == 0:
            for draft in drafts:
                self._finish(entry, draft, "length", events)
            return
        self._join([(entry, drafts)], [c.repeat(n) for c in entry.cache],
                   mx.repeat(logits, n, axis=0) if n > 1 else logits, adapter, events)

    def _join(self, members: list[tuple[_Request, list[int]]], cache: list[KVCache], logits: mx.array,
              adapter: str | None, events: list[Event]) -> None:
        """Rows of each (request, drafts) in ``members`` join the batch: ``cache`` holds one row per draft (in
        that order, run with ``adapter``), ``logits`` their last positions', which their first tokens are sampled
        from."""
        now = time.perf_counter()
        for entry, _ in members:
            entry.decode_started = entry.decode_started or now
        self._compact()  # the batch changes shape anyway: finished rows go now
        if not self._rows:
            self._batch = DecodeBatch(self.engine.model)
        joining = [(entry, draft) for entry, drafts in members for draft in drafts]
        sampler = BatchSampler([entry.params[draft] for entry, draft in joining],
                               [entry.prompt for entry, _ in joining])
        self._batch.extend(cache, sampler, logits, [adapter] * len(joining))
        self._rows += [_Row(entry, draft) for entry, draft in joining]

    def _decode(self, events: list[Event]) -> None:
        eos = self.engine.eos_token_ids
        wants_more = any(row.request.texts[row.draft].generated + 1 < row.request.request.max_tokens
                         for row in self._rows if not row.done)
        tokens = self._batch.step(queue_next=wants_more)
        for row, token in zip(self._rows, tokens, strict=True):
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
            prefill_tok_s=entry.computed / entry.prefill_s if entry.prefill_s > 0 else 0.0,
            decode_tok_s=text.generated / decode_s if entry.decode_started else 0.0,
            peak_memory_bytes=mx.get_peak_memory(),
            prefilled_tokens=entry.prefilled[draft],
        )
        events.append((entry.id, DraftDone(draft, text.text, text.finish_reason, entry.params[draft], stats)))
        entry.open_drafts.discard(draft)
        if not entry.open_drafts:
            del self._requests[entry.id]
            self._cancelled.discard(entry.id)
