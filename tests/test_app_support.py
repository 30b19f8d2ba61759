"""Shared by the app tests: a fake engine and pilot helpers.

The fake engine has the `inference.Engine` interface and yields a fixed token stream: stable pictures for the
snapshot tests, exact control for the service tests. Test code only; the app always runs the real engine."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from inference import DraftDone, GenerationStats, LoadProgress, TokenDelta

WORDS = (
    "Shipped a tiny language model that writes posts in my voice. It runs on my laptop, no cloud, "
    "and it is surprisingly good at puns about the sea."
).split(" ")


class FakeEngine:
    """Draft i of a request streams WORDS (draft i > 0 starts at word i), one word per token."""

    model_name = "fake-qwen3"
    adapter_name = "fake-lora"
    has_adapter = True
    tokenizer = SimpleNamespace(special_tokens=frozenset({"<|im_start|>", "<|im_end|>"}))  # what compose removes

    def __init__(self, token_delay: float = 0.0, words: tuple[str, ...] | list[str] = WORDS) -> None:
        self.adapter_enabled = True
        self.token_delay = token_delay
        self.words = list(words)
        self.thread: threading.Thread | None = None  # the thread that called generate, for the service tests
        self.requests: list = []
        self.started = threading.Event()  # set once the first token of a generation is out

    def render_prompt(self, user: str, system: str | None = None) -> str:
        return f"{system or ''}|{user}"

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        pass

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
        for i, params in enumerate(request.drafts):
            stats = GenerationStats(
                prompt_tokens=12, generated_tokens=len(texts[i].split()), prefill_tok_s=100.0, decode_tok_s=42.0,
                peak_memory_bytes=0,
            )
            reason = "cancelled" if cancelled else "stop"
            yield DraftDone(i, texts[i], reason, params, stats)


def fake_loader(engine: FakeEngine):
    """An EngineLoader that 'loads' `engine` in two progress steps."""

    def load(model_dir: Path, adapter_dir: Path | None, progress) -> FakeEngine:
        progress(LoadProgress(50, 100))
        progress(LoadProgress(100, 100))
        return engine

    return load


def run_async(test):
    """Run an async test function with asyncio (the suite has no async pytest plugin)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


async def wait_until(pilot, condition, timeout: float = 120.0) -> None:
    """Let the app run until `condition()` holds; fail after `timeout` seconds (a deadline, not a timing)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting after {timeout}s"
        await pilot.pause(0.02)


async def generate(pilot, key: str = "f5") -> None:
    """Press `key` and let the generation it starts run to the end, all drafts redrawn."""
    screen = pilot.app.screen
    await pilot.press(key)
    await wait_until(pilot, lambda: screen.job is None and all(card.finish_reason for card in screen.drafts.cards))
    screen.drafts.flush()
    await pilot.pause()
