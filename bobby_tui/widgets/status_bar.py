"""The status bar: model, adapter, sampling settings, last decode speed, and the load progress bar."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, ProgressBar


@dataclass
class Status:
    model: str
    adapter: str | None
    adapter_enabled: bool
    temperature: float
    top_p: float
    max_tokens: int
    decode_tok_s: float | None = None
    state: str = "loading"  # "loading" | "ready" | "generating" | "failed"

    def describe(self) -> str:
        adapter = f"{self.adapter} ({'on' if self.adapter_enabled else 'off'})" if self.adapter else "none"
        speed = f"{self.decode_tok_s:.1f} tok/s" if self.decode_tok_s is not None else "– tok/s"
        return (
            f"{self.state} · {self.model} · adapter {adapter} · temp {self.temperature:.2f} · top_p {self.top_p:.2f}"
            f" · max {self.max_tokens} · {speed}"
        )


class StatusBar(Horizontal):
    def compose(self) -> ComposeResult:
        yield Label(id="status-text", markup=False)
        yield ProgressBar(id="load-progress", show_eta=False)

    def show(self, status: Status) -> None:
        self.query_one("#status-text", Label).update(status.describe())
        self.set_class(status.state == "failed", "-failed")

    def progress(self, done: int, total: int) -> None:
        self.query_one("#load-progress", ProgressBar).update(total=max(total, 1), progress=done)

    def loading_done(self) -> None:
        self.query_one("#load-progress", ProgressBar).display = False
