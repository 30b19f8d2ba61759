"""The engine: load a model (and adapter) once, then generate batches of drafts from one owning thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import mlx.core as mx

from .api import DraftDone, GenerationRequest, LoadProgress, SamplingParams, TokenDelta
from .batching import BatchGenerator, PromptCache
from .dense_cpu import use_dense_cpu
from .errors import AdapterError
from .io.checkpoint import check_tokenizer_fits, load_weights, plan_checkpoint, stop_token_ids
from .lora import AdapterConfig, apply_adapter
from .models import family_of
from .options import EngineOptions
from .tokenizer import Tokenizer


class _Steps:
    """``LoadProgress`` of the "preparing" phase: 0 of ``total`` at once, then one more at each ``done()``."""

    def __init__(self, progress: Callable[[LoadProgress], None] | None, total: int):
        self.progress, self.total, self.count = progress, total, 0
        self._report()

    def done(self) -> None:
        self.count += 1
        self._report()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(LoadProgress(self.count, self.total, phase="preparing"))


class Engine:
    def __init__(self, model, tokenizer: Tokenizer, model_dir: Path, eos_token_ids: set[int],
                 adapters: dict[str, AdapterConfig], active_adapter: str | None):
        self.model, self.tokenizer, self.model_dir = model, tokenizer, model_dir
        self.eos_token_ids = eos_token_ids
        self.adapters = adapters  # name -> its config, in the order loaded
        self._active = active_adapter  # the adapter that adapter_enabled switches on
        self._adapter_enabled = active_adapter is not None
        self._owner = threading.get_ident()
        self.prompt_cache = PromptCache(model)  # recent prompts' caches, reused for a shared prefix

    @classmethod
    def load(cls, model_dir: Path | str, adapter_dir: Path | str | None = None,
             progress: Callable[[LoadProgress], None] | None = None, options: EngineOptions | None = None,
             adapters: Mapping[str, Path | str] | None = None) -> Engine:
        """``adapter_dir``: the default adapter (the active one, switched on), named by its directory's name;
        ``adapters``: more adapters for the same base model, by name (requests pick them per draft);
        ``options``: how to run the model (default: ``EngineOptions.for_device()``)."""
        model_dir = Path(model_dir)
        options = options or EngineOptions.for_device()
        named = {Path(adapter_dir).name: Path(adapter_dir)} if adapter_dir is not None else {}
        for name, path in (adapters or {}).items():
            if name in named:
                raise AdapterError(Path(path), f"two adapters are named {name!r}")
            named[name] = Path(path)
        plan = plan_checkpoint(model_dir)
        tokenizer = Tokenizer(model_dir)
        check_tokenizer_fits(model_dir, plan.config, tokenizer)
        eos = stop_token_ids(model_dir, plan.config, tokenizer)
        weights = load_weights(plan, options.dtype, progress)
        # The steps that transform the weights after reading report as "preparing", so a bar does not sit at 100%
        steps = 1 + options.cpu_dense + len(named)
        prepared = _Steps(progress, steps)
        model = family_of(plan.config).Model(plan.config, weights, plan.quant, options)  # fuses the projections
        prepared.done()
        if options.cpu_dense:  # dense float32 projections, ~7x the 4-bit memory, ~1.6x the decode speed (dense_cpu.py)
            use_dense_cpu(model)
            prepared.done()
        configs = {}
        for name, path in named.items():
            configs[name] = apply_adapter(model, path, name)
            prepared.done()
        active = Path(adapter_dir).name if adapter_dir is not None else None
        return cls(model, tokenizer, model_dir, eos, configs, active)

    def load_adapter(self, name: str, path: Path | str) -> None:
        """Load one more adapter for this base model (or replace the one of that name), without reloading the
        base. A first adapter becomes the active one, switched off."""
        self._check_thread()
        if not isinstance(name, str) or not name:
            raise ValueError("an adapter's name must be a non-empty string")
        self.adapters[name] = apply_adapter(self.model, path, name)
        self.prompt_cache.forget(name)
        if self._active is None:
            self._active = name

    # --- what the app shows -------------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.model_dir.name

    @property
    def adapter_names(self) -> tuple[str, ...]:
        return tuple(self.adapters)

    @property
    def active_adapter(self) -> str | None:
        """The adapter ``adapter_enabled`` switches on (None: no adapter is loaded)."""
        return self._active

    @active_adapter.setter
    def active_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise ValueError(f"no adapter named {name!r} is loaded (loaded: {', '.join(self.adapters) or 'none'})")
        self._active = name

    @property
    def adapter(self) -> AdapterConfig | None:
        return self.adapters[self._active] if self._active is not None else None

    @property
    def adapter_dir(self) -> Path | None:
        return self.adapter.path.parent if self.adapter is not None else None

    @property
    def adapter_name(self) -> str | None:
        return self._active

    @property
    def has_adapter(self) -> bool:
        return bool(self.adapters)

    @property
    def adapter_enabled(self) -> bool:
        return self._adapter_enabled

    @adapter_enabled.setter
    def adapter_enabled(self, enabled: bool) -> None:
        if enabled and not self.has_adapter:
            raise ValueError("no adapter is loaded")
        self._adapter_enabled = enabled

    @property
    def current_adapter(self) -> str | None:
        """What a draft without an adapter of its own runs with: the active adapter when switched on, else None."""
        return self._active if self._adapter_enabled else None

    def render_messages(self, messages: list[dict], prefill: str | None = None) -> str:
        """A conversation (system?, user, assistant, user, ...) as the model's chat template renders it, thinking
        off. Without ``prefill`` the prompt ends with the generation prompt (a new assistant turn); with it the
        assistant turn starts with that text, as ``mlx_lm.generate --prefill-response`` renders it."""
        return self.tokenizer.render_messages(messages, prefill)

    def render_prompt(self, user: str, system: str | None = None) -> str:
        # None: no system message; "" is an empty one, as mlx_lm renders `--system-prompt ""`
        messages = [{"role": "system", "content": system}] if system is not None else []
        return self.tokenizer.render_messages([*messages, {"role": "user", "content": user}])

    # --- model work (only on the owning thread) ------------------------------------------------------------------
    def _check_thread(self) -> None:
        if threading.get_ident() != self._owner:
            raise RuntimeError("Engine used from a thread other than the one that loaded it "
                               "(MLX streams are per thread)")

    def generate(self, request: GenerationRequest, should_cancel: Callable[[], bool] | None = None
                 ) -> Iterator[TokenDelta | DraftDone]:
        """The request's drafts decoding in one batch: text deltas as they come, then each draft's DraftDone.
        ``should_cancel`` is asked after every step; once it says yes, every draft still open ends "cancelled"."""
        self._check_thread()
        mx.reset_peak_memory()
        generator = BatchGenerator(self, max_rows=max(1, len(request.drafts)))
        request_id, cancelled = generator.submit(request), False
        while generator.has_work:
            for _, event in generator.step():
                yield event
            if not cancelled and should_cancel is not None and should_cancel():
                generator.cancel(request_id)
                cancelled = True

    def token_logprobs(self, tokens: list[int]) -> list[float]:
        """log p(tokens[i] | tokens[:i]) for i = 1 .. n-1, with the adapter as currently switched."""
        self._check_thread()
        logits = self.model(mx.array([tokens]), self.model.new_cache(1), self.current_adapter,
                            last_only=False)[0]
        logprobs = logits[:-1] - mx.logsumexp(logits[:-1], axis=-1, keepdims=True)
        picked = mx.take_along_axis(logprobs, mx.array(tokens[1:])[:, None], axis=-1)[:, 0]
        return picked.tolist()

    def warmup(self, batch_sizes: Iterable[int] = (1,), own_prompts: bool = False) -> None:
        """Two-token generations at each batch size, so kernels (compiled per shape on a GPU) are ready before the
        user's first request: the app warms up one draft and a spread's N. With ``own_prompts``, a size runs as that
        many requests of prompts of their own lengths: a server's left-padded rows, whose steps trace apart from one
        prompt's drafts."""
        for batch in sorted(set(batch_sizes)):
            # (prompt, drafts): one prompt's drafts, or one draft each of prompts of their own lengths
            requests = [("hi" + " there" * row, 1) for row in range(batch)] if own_prompts else [("hi", batch)]
            generator = BatchGenerator(self, max_rows=batch)
            for prompt, drafts in requests:
                generator.submit(GenerationRequest(self.render_prompt(prompt), [SamplingParams()] * drafts,
                                                   max_tokens=2))
            while generator.has_work:
                generator.step()

    @property
    def compiles_per_batch_size(self) -> bool:
        """Whether each new batch size costs a compilation (MLX on a GPU: its compiled steps and kernels), which a
        server pays at start rather than in a client's first token."""
        return mx.default_device().type == mx.DeviceType.gpu
