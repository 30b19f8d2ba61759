"""The text side of one draft: its streaming detokenizer, stop strings with holdback, counts and finish reason."""

from __future__ import annotations

import time

from .tokenizer import StreamingDetokenizer, Tokenizer


class DraftText:
    """Tokens in, text deltas out. Text that could be the start of a stop string is held back, so the deltas always
    add up to the final text."""

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
