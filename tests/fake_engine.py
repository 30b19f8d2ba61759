"""The app tests' one stand-in for the engine, and loaders that hand it (or the real engine) to the app.

`FakeEngine` has the `inference.Engine` interface and yields a fixed token stream: stable pictures for the snapshot
tests, exact control for the service and UI tests (a delay per token, streams held after their first token until
cancelled, a gate that holds the warm-up). `holding` wraps any loader, the real engine's too, so a test can press a key
mid-stream however fast the machine is. Test code only; the app always runs the real engine.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

from inference import DraftDone, GenerationStats, LoadProgress, TokenDelta

WORDS = (
    "Shipped a tiny language model that writes posts in my voice. It runs on my laptop, no cloud, "
    "and it is surprisingly good at puns about the sea."
).split(" ")
GATE_TIMEOUT_S = 120  # a held stream or warm-up gives up after this long, so a failing test cannot hang


class FakeEngine:
    """Draft i of a request streams WORDS (draft i > 0 starts at word i), one word per token."""

    tokenizer = SimpleNamespace(special_tokens=frozenset({"<|im_start|>", "<|im_end|>"}))  # what compose removes

    def __init__(
        self,
        token_delay: float = 0.0,
        words: tuple[str, ...] | list[str] = WORDS,
        model_name: str = "fake-qwen3",
        adapter_name: str = "fake-lora",
        warmup_gate: threading.Event | None = None,
        hold_until_cancelled: bool = False,
    ) -> None:
        self.model_name = model_name
        self.adapters = {adapter_name: Path(adapter_name)} if adapter_name else {}  # name -> the folder it came from
        self.active_adapter = adapter_name or None
        self.adapter_enabled = bool(adapter_name)
        self.token_delay = token_delay
        self.words = list(words)
        self.warmup_gate = warmup_gate  # warmup() waits for it: a test can look at the screen mid warm-up
        self.hold_until_cancelled = hold_until_cancelled  # streams stop after their first token until cancelled
        self.thread: threading.Thread | None = None  # the thread that called generate, for the service tests
        self.requests: list = []
        self.warmed_up: list[tuple[int, ...]] = []
        self.started = threading.Event()  # set once the first token of a generation is out

    @property
    def has_adapter(self) -> bool:
        return self.active_adapter is not None

    @property
    def adapter_name(self) -> str | None:
        return self.active_adapter

    @property
    def adapter_names(self) -> list[str]:
        return list(self.adapters)

    def load_adapter(self, name: str, path: Path) -> None:
        if not Path(path).name.startswith("lora"):  # the fake's way to have an adapter folder that does not load
            raise ValueError("not an adapter")
        self.adapters[name] = Path(path)

    def render_prompt(self, user: str, system: str | None = None) -> str:
        return f"{system or ''}|{user}"

    def render_messages(self, messages: list[dict[str, str]], prefill: str | None = None) -> str:
        """The turns as "role:content" joined by "|", then the prefill: easy to assert on."""
        return "|".join(f"{m['role']}:{m['content']}" for m in messages) + f"|assistant:{prefill or ''}"

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        if self.warmup_gate is not None:
            self.warmup_gate.wait(GATE_TIMEOUT_S)
        self.warmed_up.append(tuple(batch_sizes))

    def _words_of(self, draft: int) -> list[str]:
        return self.words[draft:] + self.words[:draft]

    def generate(self, request, should_cancel=None):
        self.thread = threading.current_thread()
        self.requests.append(request)
        streams = [self._words_of(i)[: request.max_tokens] for i in range(len(request.drafts))]
        texts = [""] * len(streams)
        cancelled = False
        for step in range(max(len(s) for s in streams)):
            if should_cancel is not None and should_cancel():
                cancelled = True
                break
            for i, words in enumerate(streams):
                if step < len(words):
                    delta = words[step] if step == 0 else " " + words[step]
                    texts[i] += delta
                    yield TokenDelta(i, delta)
            self.started.set()
            time.sleep(self.token_delay)
            deadline = time.monotonic() + GATE_TIMEOUT_S
            while self.hold_until_cancelled and should_cancel is not None and not should_cancel():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.005)
        for i, params in enumerate(request.drafts):
            stats = GenerationStats(
                prompt_tokens=12, generated_tokens=len(texts[i].split()), prefill_tok_s=100.0, decode_tok_s=42.0,
                peak_memory_bytes=0,
            )
            yield DraftDone(i, texts[i], "cancelled" if cancelled else "stop", params, stats)


def fake_loader(engine: FakeEngine):
    """An EngineLoader that 'loads' `engine`, reporting the reading and preparing phases as the engine does."""

    def load(model_dir: Path, adapter_dir: Path | None, progress) -> FakeEngine:
        progress(LoadProgress(50, 100))
        progress(LoadProgress(100, 100))
        progress(LoadProgress(0, 1, "preparing"))
        return engine

    return load


def failing_loader(error: Exception):
    """An EngineLoader that fails with `error`, as a model that does not load would."""

    def load(model_dir: Path, adapter_dir: Path | None, progress):
        raise error

    return load


def holding(loader, gate: threading.Event, prompt: str, after_gate: list | None = None):
    """`loader`, with the stream of any request whose prompt contains `prompt` held after its first text delta
    until `gate` opens (the warm-up and other prompts pass). Deltas that come after the gate go to `after_gate`."""

    def load(model_dir, adapter_dir, progress):
        engine = loader(model_dir, adapter_dir, progress)
        generate = engine.generate

        def held(request, should_cancel=None):
            if prompt not in request.prompt:
                yield from generate(request, should_cancel)
                return
            for number, event in enumerate(generate(request, should_cancel)):
                if gate.is_set() and isinstance(event, TokenDelta) and after_gate is not None:
                    after_gate.append(event)
                yield event
                if number == 0:
                    gate.wait(timeout=GATE_TIMEOUT_S)

        engine.generate = held
        return engine

    return load
