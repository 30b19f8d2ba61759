"""Drafting posts: one batched generation, post-processing, and regeneration of drafts that come out too short.

Shared by the app and the CLI. Runs on the engine's thread (the engine's rule: one thread for MLX).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Callable, Iterator

from inference import DraftDone, GenerationRequest, GenerationStats, SamplingParams, TokenDelta

from bobby_tui.config import PostProcess
from bobby_tui.postprocess import postprocess as apply_postprocess
from bobby_tui.storage import GenerationRecord


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
) -> Iterator[TokenDelta | DraftRetry | Draft]:
    """Generate len(drafts) drafts in one batch; yield text deltas as they come and one Draft per draft.

    A post-processed draft shorter than postprocess.min_length is regenerated with a new seed, up to
    postprocess.retries times (a DraftRetry announces each); the retries of one round run as one batch.
    Special tokens (the tokenizer's ``special_tokens``: ``<|im_start|>``, ...) are removed from deltas and drafts.
    With raw=True the drafts are exactly the decoded text: no special-token removal, no post-processing, no retries.
    ``system_prompt`` None renders no system message; "" renders an empty one (as mlx_lm does for the same messages).
    """
    prompt = engine.render_prompt(user_prompt, system_prompt)
    without_specials = (lambda text: text) if raw else special_token_remover(engine.tokenizer.special_tokens)
    pending = dict(enumerate(drafts))  # draft index -> its params for the next round
    attempts = {i: 1 for i in pending}
    first_seeds: dict[int, int] = {}  # the engine resolves seeds; retries derive theirs from the first one
    while pending:
        order = sorted(pending)  # the request's draft k is our draft order[k]
        request = GenerationRequest(prompt=prompt, drafts=[pending[i] for i in order], max_tokens=max_tokens)
        pending = {}
        for event in engine.generate(request, should_cancel=should_cancel):
            index = order[event.draft]
            if isinstance(event, TokenDelta):
                # with no stop strings the engine emits each token's text whole: a special token never straddles deltas
                delta = without_specials(event.text)
                if delta:
                    yield TokenDelta(draft=index, text=delta)
                continue
            first_seeds.setdefault(index, event.params.seed)
            text = event.text if raw else apply_postprocess(without_specials(event.text), postprocess, post_limit)
            if not raw and _wants_retry(event, text, postprocess, attempts[index]):
                attempts[index] += 1
                pending[index] = dataclasses.replace(event.params, seed=retry_seed(first_seeds[index], attempts[index]))
                yield DraftRetry(draft=index, attempt=attempts[index])
                continue
            yield Draft(
                draft=index,
                text=text,
                raw_text=event.text,
                params=event.params,
                stats=event.stats,
                finish_reason=event.finish_reason,
                attempts=attempts[index],
                seed=first_seeds[index],
            )


def special_token_remover(special_tokens: frozenset[str]) -> Callable[[str], str]:
    """A function that deletes every occurrence of the given token texts (longest first, so a special token that
    contains another is removed whole)."""
    if not special_tokens:
        return lambda text: text
    pattern = re.compile("|".join(re.escape(t) for t in sorted(special_tokens, key=len, reverse=True)))
    return lambda text: pattern.sub("", text)


def _wants_retry(done: DraftDone, text: str, opts: PostProcess, attempts: int) -> bool:
    # a greedy draft would come out the same again; a cancelled one was stopped on purpose
    return (
        len(text) < opts.min_length
        and attempts <= opts.retries
        and done.finish_reason != "cancelled"
        and done.params.temperature > 0
    )


def to_record(draft: Draft, engine, user_prompt: str, system_prompt: str | None) -> GenerationRecord:
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
    )
