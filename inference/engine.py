"""The engine: load a model (and adapter) once, then generate batches of drafts from one owning thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import mlx.core as mx

from .api import DraftDone, GenerationRequest, GenerationStats, LoadProgress, SamplingParams, TokenDelta
from .cache import KVCache
from .config import read_json
from .dense_cpu import use_dense_cpu
from .errors import ConfigError
from .io.checkpoint import load_weights, plan_checkpoint
from .lora import AdapterConfig, apply_adapter
from .models import family_of
from .options import EngineOptions
from .sampling import BatchSampler
from .tokenizer import StreamingDetokenizer, Tokenizer

def compute_dtype() -> mx.Dtype:
    """The default device's compute dtype (``EngineOptions.for_device().compute_dtype``) as an MLX dtype."""
    return EngineOptions.for_device().dtype


class _Draft:
    """One row of a batch: its detokenizer, stop-string watch and counts. Text that could be the start of a stop
    string is held back, so the deltas always add up to the final text."""

    def __init__(self, tokenizer: Tokenizer, stop_strings: tuple[str, ...]):
        self.detokenizer = StreamingDetokenizer(tokenizer, drop_leading_space=True)
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.holdback = max((len(s) for s in self.stop_strings), default=1) - 1
        self.emitted = 0
        self.generated = 0
        self.finish_reason: str | None = None
        self.finished_at = 0.0

    @property
    def text(self) -> str:
        return self.detokenizer.text

    def push(self, token: int) -> str:
        self.generated += 1
        self.detokenizer.add(token)
        text = self.detokenizer.text
        hits = [i for i in (text.find(s, max(0, self.emitted - self.holdback)) for s in self.stop_strings) if i >= 0]
        if hits:
            self.detokenizer.text = text[: min(hits)]
            return self.finish("stop", flush=False)  # the cut ends the text: nothing held back belongs to it
        ready = max(self.emitted, len(text) - self.holdback)
        return self._emit_to(ready)

    def finish(self, reason: str, flush: bool = True) -> str:
        self.finish_reason, self.finished_at = reason, time.perf_counter()
        if flush:
            self.detokenizer.flush()
        return self._emit_to(len(self.text))

    def _emit_to(self, end: int) -> str:
        delta, self.emitted = self.text[self.emitted : end], max(self.emitted, end)
        return delta


class Engine:
    def __init__(self, model, tokenizer: Tokenizer, model_dir: Path, eos_token_ids: set[int],
                 adapter: AdapterConfig | None, adapter_dir: Path | None):
        self.model, self.tokenizer = model, tokenizer
        self.model_dir, self.adapter_dir, self.adapter = model_dir, adapter_dir, adapter
        self.eos_token_ids = eos_token_ids
        self._adapter_enabled = adapter is not None
        self._owner = threading.get_ident()
        self._prompt_cache: list[KVCache] | None = None  # the last prompt's cache, reused for a shared prefix
        self._prompt_tokens: list[int] = []
        self._prompt_cache_lora = False

    @classmethod
    def load(cls, model_dir: Path | str, adapter_dir: Path | str | None = None,
             progress: Callable[[LoadProgress], None] | None = None, options: EngineOptions | None = None) -> "Engine":
        """``options``: how to run the model (default: ``EngineOptions.for_device()``)."""
        model_dir = Path(model_dir)
        options = options or EngineOptions.for_device()
        plan = plan_checkpoint(model_dir)
        tokenizer = Tokenizer(model_dir)
        weights = load_weights(plan, options.dtype, progress)
        model = family_of(plan.config).Model(plan.config, weights, plan.quant, options)
        if options.cpu_dense:  # dense float32 projections, ~7x the 4-bit memory, ~1.6x the decode speed (dense_cpu.py)
            use_dense_cpu(model)
        adapter = apply_adapter(model, adapter_dir) if adapter_dir is not None else None
        eos = set(plan.config.eos_token_ids) | tokenizer.eos_token_ids
        generation_config = model_dir / "generation_config.json"
        if generation_config.exists():
            extra = read_json(generation_config).get("eos_token_id")
            eos |= set(extra if isinstance(extra, list) else [extra] if extra is not None else [])
        if not eos:
            raise ConfigError(model_dir / "config.json", "no eos_token_id in config.json, generation_config.json or the tokenizer")
        return cls(model, tokenizer, model_dir, eos, adapter, Path(adapter_dir) if adapter_dir is not None else None)

    # --- what the app shows -------------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.model_dir.name

    @property
    def adapter_name(self) -> str | None:
        return self.adapter_dir.name if self.adapter_dir is not None else None

    @property
    def has_adapter(self) -> bool:
        return self.adapter is not None

    @property
    def adapter_enabled(self) -> bool:
        return self._adapter_enabled

    @adapter_enabled.setter
    def adapter_enabled(self, enabled: bool) -> None:
        if enabled and not self.has_adapter:
            raise ValueError("no adapter is loaded")
        self._adapter_enabled = enabled

    def render_prompt(self, user: str, system: str | None = None) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False)

    # --- model work (only on the owning thread) ------------------------------------------------------------------
    def _check_thread(self) -> None:
        if threading.get_ident() != self._owner:
            raise RuntimeError("Engine used from a thread other than the one that loaded it (MLX streams are per thread)")

    def _prefill(self, tokens: list[int]) -> mx.array:
        """Run the prompt through the model, reusing the cached prefix of the last prompt; -> last logits (1, V)."""
        use_lora = self._adapter_enabled
        cache = self._prompt_cache
        if cache is None or self._prompt_cache_lora != use_lora:
            cache, reused = self.model.new_cache(1), 0
        else:
            reused = 0
            limit = min(len(tokens) - 1, cache[0].offset)  # at least one new token is needed for logits
            while reused < limit and self._prompt_tokens[reused] == tokens[reused]:
                reused += 1
        for layer_cache in cache:
            layer_cache.trim(layer_cache.offset - reused)
        chunk = self.model.options.prefill_chunk
        for start in range(reused, len(tokens), chunk):
            logits = self.model(mx.array([tokens[start : start + chunk]]), cache, use_lora)
            mx.eval(logits)
        self._prompt_cache, self._prompt_tokens, self._prompt_cache_lora = cache, tokens, use_lora
        return logits

    def generate(self, request: GenerationRequest, should_cancel: Callable[[], bool] | None = None
                 ) -> Iterator[TokenDelta | DraftDone]:
        self._check_thread()
        prompt = self.tokenizer.encode(request.prompt)
        if not prompt:
            raise ValueError("the prompt is empty")
        params = [p.resolved() for p in request.drafts]
        batch, use_lora = len(params), self._adapter_enabled
        mx.reset_peak_memory()
        started = time.perf_counter()
        logits = self._prefill(prompt)
        prefill_s = time.perf_counter() - started
        cache = self._prompt_cache if batch == 1 else [c.repeat(batch) for c in self._prompt_cache]
        sampler = BatchSampler(params, prompt)
        drafts = [_Draft(self.tokenizer, request.stop_strings) for _ in params]

        def step(logits: mx.array) -> mx.array:
            tokens = sampler(logits)
            sampler.observe(tokens)
            return tokens

        tokens = step(mx.repeat(logits, batch, axis=0) if batch > 1 else logits)
        decode_started = time.perf_counter()
        try:
            for n in range(request.max_tokens):
                next_tokens = None
                if n + 1 < request.max_tokens:  # queue the next step before reading this one: the device stays busy
                    next_tokens = step(self.model.decode(tokens[:, None], cache, use_lora))
                    mx.async_eval(next_tokens)
                for i, token in enumerate(tokens.tolist()):
                    draft = drafts[i]
                    if draft.finish_reason is not None:
                        continue
                    delta = draft.finish("stop") if token in self.eos_token_ids else draft.push(token)
                    if draft.finish_reason is None and draft.generated >= request.max_tokens:
                        delta += draft.finish("length")
                    if delta:
                        yield TokenDelta(i, delta)
                    if draft.finish_reason is not None:
                        yield self._done(i, draft, params[i], len(prompt), prefill_s, decode_started)
                if should_cancel is not None and should_cancel():
                    break
                if all(d.finish_reason is not None for d in drafts):
                    break
                tokens = next_tokens
            for i, draft in enumerate(drafts):
                if draft.finish_reason is None:
                    delta = draft.finish("cancelled" if request.max_tokens > 0 else "length")
                    if delta:
                        yield TokenDelta(i, delta)
                    yield self._done(i, draft, params[i], len(prompt), prefill_s, decode_started)
        finally:
            for layer_cache in self._prompt_cache:  # a batch of one decoded into the prompt cache itself
                layer_cache.trim(layer_cache.offset - len(prompt))

    def _done(self, index: int, draft: _Draft, params: SamplingParams, prompt_tokens: int, prefill_s: float,
              decode_started: float) -> DraftDone:
        decode_s = max(draft.finished_at - decode_started, 1e-9)
        stats = GenerationStats(
            prompt_tokens=prompt_tokens,
            generated_tokens=draft.generated,
            prefill_tok_s=prompt_tokens / max(prefill_s, 1e-9),
            decode_tok_s=draft.generated / decode_s,
            peak_memory_bytes=mx.get_peak_memory(),
        )
        return DraftDone(index, draft.text, draft.finish_reason, params, stats)

    def token_logprobs(self, tokens: list[int]) -> list[float]:
        """log p(tokens[i] | tokens[:i]) for i = 1 .. n-1, with the adapter as currently switched."""
        self._check_thread()
        logits = self.model(mx.array([tokens]), self.model.new_cache(1), self._adapter_enabled, last_only=False)[0]
        logprobs = logits[:-1] - mx.logsumexp(logits[:-1], axis=-1, keepdims=True)
        picked = mx.take_along_axis(logprobs, mx.array(tokens[1:])[:, None], axis=-1)[:, 0]
        return picked.tolist()

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Two-token generations at each batch size, so kernels (compiled per shape on a GPU) are ready before the
        user's first request: the app warms up one draft and a spread's N."""
        for batch in sorted(set(batch_sizes)):
            request = GenerationRequest(self.render_prompt("hi"), [SamplingParams()] * batch, max_tokens=2)
            for _ in self.generate(request):
                pass
