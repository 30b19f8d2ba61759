"""Drafting posts: one batched generation, post-processing, and regeneration of drafts that come out too short.

Shared by the app and the CLI. Runs on the engine's thread (the engine's rule: one thread for MLX).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bobby_tui.config import PostProcess
from bobby_tui.postprocess import post_length
from bobby_tui.postprocess import postprocess as apply_postprocess
from bobby_tui.storage import GenerationRecord
from inference import DraftDone, GenerationRequest, GenerationStats, SamplingParams, TokenDelta


@dataclass
class DraftRetry:
    """Draft `draft` is being regenerated (attempt `attempt`, counting from 1): clear its text."""

    draft: int
    attempt: int


@dataclass
class Draft:
    draft: int
    text: str  # special tokens removed and post-processed (equal to raw_text with raw=True)
    raw_text: str  # exactly what the model decoded
    params: SamplingParams  # the last attempt's: its seed is attempt_seed
    stats: GenerationStats
    finish_reason: str
    attempts: int
    seed: int  # the draft's seed (the user's, or the one picked for the first attempt): what reproduces the draft

    @property
    def attempt_seed(self) -> int:
        """The seed of the attempt that produced the text (equal to seed on the first attempt)."""
        return self.params.seed


# Drafts of one batch: the decode step's cost grows with the rows; past a few dozen a batch stops paying off even on a
# GPU, and each row holds its own KV cache. draft_limit lowers it further to what the machine's memory can hold.
MAX_DRAFTS = 64
# The share of the available memory a batch's KV cache may take: the weights, activations and everything else running
# need the rest.
_KV_MEMORY_SHARE = 0.5
_KV_BYTES_PER_VALUE = 4  # float32 on the CPU; bf16 on a GPU takes half, so this is an upper bound


class DraftLimitError(ValueError):
    """More drafts were asked for than one batch can hold; the message names the limit (`limit`, 0 when not even one
    draft fits)."""

    def __init__(self, message: str, limit: int):
        super().__init__(message)
        self.limit = limit


def _over_batch(count: int) -> DraftLimitError:
    return DraftLimitError(f"{count} drafts are more than one batch holds (at most {MAX_DRAFTS})", MAX_DRAFTS)


def kv_cache_bytes(config, tokens: int) -> int:
    """The KV cache one draft (one batch row) of `tokens` positions needs for a model of `config` (its
    ``inference.read_model_args``): keys and values, every layer."""
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * _KV_BYTES_PER_VALUE * tokens


def available_memory() -> int | None:
    """Bytes of memory free for a new allocation: MemAvailable on Linux, the physical memory elsewhere (macOS shares
    it between CPU and GPU); None when the system does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def draft_limit(config, tokens: int, memory: int | None) -> int:
    """How many drafts of `tokens` positions one batch may hold: MAX_DRAFTS, or fewer when their KV cache would take
    more than half of `memory` (0: not even one fits)."""
    if memory is None:
        return MAX_DRAFTS
    return min(MAX_DRAFTS, int(memory * _KV_MEMORY_SHARE) // max(kv_cache_bytes(config, tokens), 1))


def check_draft_count(count: int, config, tokens: int, memory: int | None) -> None:
    """Raise DraftLimitError when `count` drafts of `tokens` positions are more than a batch can hold."""
    if count > MAX_DRAFTS:
        raise _over_batch(count)
    limit = draft_limit(config, tokens, memory)
    if count > limit:
        per_draft = kv_cache_bytes(config, tokens)
        need = f"{count} drafts need {_gb(count * per_draft)}" if count > 1 else f"one draft needs {_gb(per_draft)}"
        raise DraftLimitError(
            f"{need} of KV cache ({tokens:,} tokens each, prompt and max tokens) and this machine has {_gb(memory)} "
            f"available: at most {limit} draft{'s' if limit != 1 else ''} (fewer max tokens or a shorter prompt allow "
            "more)",
            limit,
        )


def _gb(size: int) -> str:
    return f"{size / 2**30:.1f} GB" if size >= 2**30 else f"{size / 2**20:.0f} MB"


# Seeds of regenerated drafts stay reproducible from the first seed but never collide with the seeds
# S, S+1, ... that the sibling drafts of a `--seed S` batch use.
_RETRY_SEED_STRIDE = 1_000_003
_SEED_MODULUS = 2**31


def retry_seed(seed: int, attempt: int) -> int:
    return (seed + (attempt - 1) * _RETRY_SEED_STRIDE) % _SEED_MODULUS


def compose(
    engine,
    user_prompt: str,
    system_prompt: str | None,
    drafts: list[SamplingParams],
    max_tokens: int,
    postprocess: PostProcess,
    post_limit: int,
    should_cancel: Callable[[], bool] | None = None,
    raw: bool = False,
    *,
    history: list[dict] | None = None,
    prefill: str | None = None,
    adapters: tuple[str | None, ...] | None = None,
) -> Iterator[TokenDelta | DraftRetry | Draft]:
    """Generate len(drafts) drafts in one batch; yield text deltas as they come and one Draft per draft.

    A post-processed draft shorter than postprocess.min_length is regenerated with a new seed, up to
    postprocess.retries times (a DraftRetry announces each); the retries of one round run as one batch.
    Special tokens (the tokenizer's ``special_tokens``: ``<|im_start|>``, ...) are removed from deltas and drafts.
    With raw=True the drafts are exactly the decoded text: no special-token removal, no post-processing, no retries.
    ``system_prompt`` None renders no system message; "" renders an empty one (as mlx_lm does for the same messages).
    ``history``: earlier turns (user, assistant, ...), between the system message and ``user_prompt``: the drafts
    continue that conversation. ``prefill``: each reply starts with this text (its deltas and text include it).
    ``adapters``: per draft, the adapter it runs with (a loaded adapter's name, or None for the base model).
    """
    if len(drafts) > MAX_DRAFTS:  # the app's spread comes here too
        raise _over_batch(len(drafts))
    if adapters is not None and len(adapters) != len(drafts):
        raise ValueError(f"{len(adapters)} adapters for {len(drafts)} drafts: one per draft")
    prompt = engine.render_messages(conversation(user_prompt, system_prompt, history), prefill=prefill or None)
    prefill = prefill or ""
    specials = SpecialTokenFilter(frozenset() if raw else engine.tokenizer.special_tokens)
    pending = dict(enumerate(drafts))  # draft index -> its params for the next round
    attempts = {i: 1 for i in pending}
    first_seeds: dict[int, int] = {}  # the engine resolves seeds; retries derive theirs from the first one
    while pending:
        order = sorted(pending)  # the request's draft k is our draft order[k]
        request = GenerationRequest(prompt=prompt, drafts=[pending[i] for i in order], max_tokens=max_tokens)
        pending = {}
        if prefill:
            for index in order:
                if delta := specials.delta(index, prefill):
                    yield TokenDelta(draft=index, text=delta)
        for event in engine.generate(request, should_cancel=should_cancel):
            index = order[event.draft]
            if isinstance(event, TokenDelta):
                if delta := specials.delta(index, event.text):
                    yield TokenDelta(draft=index, text=delta)
                continue
            if rest := specials.end(index):
                yield TokenDelta(draft=index, text=rest)
            first_seeds.setdefault(index, event.params.seed)
            decoded = prefill + event.text
            text = decoded if raw else apply_postprocess(specials(decoded), postprocess, post_limit)
            if not raw and _wants_retry(event, text, postprocess, attempts[index]):
                attempts[index] += 1
                pending[index] = dataclasses.replace(event.params, seed=retry_seed(first_seeds[index], attempts[index]))
                yield DraftRetry(draft=index, attempt=attempts[index])
                continue
            yield Draft(
                draft=index,
                text=text,
                raw_text=decoded,
                params=event.params,
                stats=event.stats,
                finish_reason=event.finish_reason,
                attempts=attempts[index],
                seed=first_seeds[index],
            )


def conversation(user_prompt: str, system_prompt: str | None, history: list[dict] | None = None) -> list[dict]:
    """The messages a draft replies to: the system message (None: none), the earlier turns, the new user prompt."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return [*system, *(history or []), {"role": "user", "content": user_prompt}]


class SpecialTokenFilter:
    """Removes the texts of special tokens from whole texts and, alike, from each draft's stream of deltas.

    The tail of a delta that could begin a special token's text is held back until the next delta tells (a model can
    also spell one out with ordinary tokens), so a draft's filtered deltas always add up to its filtered text.
    """

    def __init__(self, special_tokens: frozenset[str]):
        tokens = sorted(special_tokens, key=len, reverse=True)  # longest first: one that contains another goes whole
        self._pattern = re.compile("|".join(map(re.escape, tokens))) if tokens else None
        self._prefixes = {t[:i] for t in tokens for i in range(1, len(t))}
        self._longest = max(map(len, tokens), default=0)
        self._held: dict[int, str] = {}

    def __call__(self, text: str) -> str:
        return self._pattern.sub("", text) if self._pattern is not None else text

    def delta(self, draft: int, delta: str) -> str:
        text = self(self._held.pop(draft, "") + delta)
        for cut in range(max(0, len(text) - self._longest + 1), len(text)):
            if text[cut:] in self._prefixes:
                self._held[draft] = text[cut:]
                return text[:cut]
        return text

    def end(self, draft: int) -> str:
        """What `draft`'s stream held back: it did not become a special token."""
        return self._held.pop(draft, "")


def _wants_retry(done: DraftDone, text: str, opts: PostProcess, attempts: int) -> bool:
    # a greedy draft would come out the same again; a cancelled one was stopped on purpose
    return (
        post_length(text) < opts.min_length
        and attempts <= opts.retries
        and done.finish_reason != "cancelled"
        and done.params.temperature > 0
    )


def to_record(
    draft: Draft,
    engine,
    user_prompt: str,
    system_prompt: str | None,
    *,
    history: list[dict] | None = None,
    prefill: str | None = None,
    persona: str | None = None,
    parent_id: int | None = None,
) -> GenerationRecord:
    """The history row of `draft`, drafted by compose with the same prompt, system prompt, history and prefill."""
    return GenerationRecord(
        prompt=user_prompt,
        text=draft.text,
        temperature=draft.params.temperature,
        top_p=draft.params.top_p,
        seed=draft.seed,
        attempt_seed=draft.attempt_seed,
        attempts=draft.attempts,
        model=engine.model_name,
        adapter=engine.adapter_name if engine.adapter_enabled else None,
        prompt_tokens=draft.stats.prompt_tokens,
        generated_tokens=draft.stats.generated_tokens,
        decode_tok_s=draft.stats.decode_tok_s,
        prefill_tok_s=draft.stats.prefill_tok_s,
        finish_reason=draft.finish_reason,
        system_prompt=system_prompt or "",
        raw_text=draft.raw_text,
        persona=persona,
        parent_id=parent_id,
        # a plain prompt's row needs no messages: system_prompt and prompt say it all
        messages=conversation(user_prompt, system_prompt, history) if history else None,
        prefill=prefill or None,
    )
