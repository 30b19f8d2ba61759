"""The status bar: state, last decode speed, persona, sampling settings, adapter, model, and the load progress bar.

Its values are reactives bound to the composer screen's (`data_bind`): the screen owns the state, the bar shows it.
The most useful values come first, so a narrow terminal cuts the model's name, never the speed.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.widgets import Label, ProgressBar


class StatusBar(Horizontal):
    state: reactive[str] = reactive("loading")
    persona: reactive[str | None] = reactive(None)
    load_phase: reactive[str] = reactive("reading")  # inference.api.LOAD_PHASES, while loading
    model_name: reactive[str] = reactive("")
    adapter_name: reactive[str | None] = reactive(None)
    adapter_enabled: reactive[bool] = reactive(False)
    temperature: reactive[float] = reactive(0.0)
    top_p: reactive[float] = reactive(1.0)
    max_tokens: reactive[int] = reactive(0)
    decode_tok_s: reactive[float | None] = reactive(None)
    location: reactive[str] = reactive("local")  # where the engine runs: "local" or the server's URL

    def compose(self) -> ComposeResult:
        yield Label(id="status-text", markup=False)
        yield ProgressBar(id="load-progress", show_eta=False)

    def on_mount(self) -> None:
        for name in ("state", "persona", "load_phase", "model_name", "adapter_name", "adapter_enabled", "temperature",
                     "top_p", "max_tokens", "decode_tok_s", "location"):
            self.watch(self, name, self._redraw, init=False)
        self._redraw()

    def describe(self) -> str:
        state = f"loading: {self.load_phase}…" if self.state == "loading" else self.state
        speed = f"{self.decode_tok_s:.1f} tok/s" if self.decode_tok_s is not None else "– tok/s"
        adapter = f"{self.adapter_name} ({'on' if self.adapter_enabled else 'off'})" if self.adapter_name else "none"
        persona = f" · persona {self.persona}" if self.persona else ""
        # on a server, its URL; in-process ("local") says nothing, so a small terminal keeps its one status line
        server = f" · {self.location}" if self.location != "local" else ""
        return (
            f"{state} · {speed}{persona} · temp {self.temperature:.2f} · top_p {self.top_p:.2f} · max {self.max_tokens}"
            f" · adapter {adapter} · {self.model_name}{server}"
        )

    def _redraw(self) -> None:
        self.query_one("#status-text", Label).update(self.describe())
        self.set_class(self.state == "failed", "-failed")
        self.query_one("#load-progress", ProgressBar).display = self.state == "loading"

    def progress(self, done: int, total: int) -> None:
        self.query_one("#load-progress", ProgressBar).update(total=max(total, 1), progress=done)
