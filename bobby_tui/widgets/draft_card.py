"""One draft on screen: its text as it streams, its length against the post limit, how it was made, and the
conversation it continues."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Static

from bobby_tui.postprocess import post_length

CHAIN_PART_CHARS = 24  # each turn of the conversation line is cut to this many characters
CHAIN_PARTS = 4  # and a longer conversation shows its first prompt and its last three turns


class DraftCard(Vertical, can_focus=True):
    """Streams text in through `append` (buffered) and `flush` (redraw); `finish` shows the final draft."""

    def __init__(
        self,
        number: int,
        temperature: float,
        seed: int | None,
        post_limit: int,
        messages: list[dict[str, str]] | None = None,
        prefill: str | None = None,
        adapter: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        # the conversation the draft answers, oldest first, ending with the user turn; a refinement has several
        self.messages = messages or []
        self.prefill = prefill  # the text the draft was continued from (edit and continue)
        self.adapter = adapter  # in a comparison of adapters: which one ("base", "adapter v2") made the draft
        self.number = number  # 1-based, as shown
        self.temperature = temperature
        self.seed = seed
        self.post_limit = post_limit
        self.text = ""  # a continued draft's deltas start with the edited text
        self.tok_s: float | None = None
        self.finish_reason: str | None = None
        self.attempt = 1
        self.gen_id: int | None = None  # the stored generation, once finished and saved
        self.unsaved = False  # finished, but saving it to the history failed: it exists only on screen
        self.favorite = False
        self._deltas = 0
        self._started: float | None = None
        self._dirty = True

    def compose(self) -> ComposeResult:
        yield Static(classes="draft-header", markup=False)
        chain = Static(self._chain(), classes="draft-chain", markup=False)
        chain.display = bool(chain.content)
        yield chain
        yield Static("", markup=False, classes="draft-body")
        yield Label(classes="draft-meter")

    def on_mount(self) -> None:
        self.flush()

    # --- streaming ---

    def append(self, text: str) -> None:
        """Buffer a text delta; nothing is redrawn until `flush`."""
        if self._started is None:
            self._started = time.monotonic()
        self.text += text
        self._deltas += 1
        self._dirty = True

    def restart(self, attempt: int) -> None:
        """The draft is being generated again (the composer rejected the last attempt)."""
        self.text, self.attempt, self._deltas, self._started = "", attempt, 0, None
        self._dirty = True

    def finish(self, text: str, seed: int | None, tok_s: float, finish_reason: str) -> None:
        self.text, self.seed, self.tok_s, self.finish_reason = text, seed, tok_s, finish_reason
        self._dirty = True
        self.flush()

    def saved(self, gen_id: int) -> None:
        self.gen_id, self.unsaved = gen_id, False
        self._dirty = True
        self.flush()

    def not_saved(self) -> None:
        self.unsaved = True
        self._dirty = True
        self.flush()

    def set_favorite(self, favorite: bool) -> None:
        self.favorite = favorite
        self._dirty = True
        self.flush()

    @property
    def length(self) -> int:
        """The post's length as Bluesky counts it: graphemes (an emoji with its modifiers is one)."""
        return post_length(self.text)

    @property
    def over_limit(self) -> bool:
        return self.length > self.post_limit

    def flush(self) -> None:
        """Redraw if anything changed since the last flush."""
        if not self._dirty or not self.is_mounted:
            return
        self._dirty = False
        self.query_one(".draft-header", Static).update(self._header())
        self.query_one(".draft-body", Static).update(self.text or "…")
        self.query_one(".draft-meter", Label).update(f"{self.length} / {self.post_limit}")
        self.set_class(self.over_limit, "-over")
        self.set_class(self.finish_reason is None, "-streaming")

    def _header(self) -> str:
        parts = [f"#{self.number}", *([self.adapter] if self.adapter else []), f"temp {self.temperature:.2f}"]
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        parts.append(self._speed())
        if self.attempt > 1:
            parts.append(f"attempt {self.attempt}")
        if self.finish_reason == "cancelled":
            parts.append("cancelled")
        if self.unsaved:
            parts.append("not saved")
        if self.favorite:
            parts.append("★")
        return " · ".join(parts)

    def _chain(self) -> str:
        """The conversation in one compact line, "prompt → draft → instruction →", for a refinement; where the
        draft continues an edit, says so. Empty for a draft of a plain prompt."""
        parts = [_cut(m["content"]) for m in self.messages] if len(self.messages) > 1 else []
        if len(parts) > CHAIN_PARTS:  # a long conversation: its first prompt and its latest turns
            parts = [parts[0], "…", *parts[-(CHAIN_PARTS - 1):]]
        if self.prefill:
            parts.append(f"continues your edit ({post_length(self.prefill)} chars)")
        return " → ".join(parts) + " →" if parts else ""

    def _speed(self) -> str:
        if self.tok_s is not None:
            return f"{self.tok_s:.1f} tok/s"
        if self._started is None or self._deltas < 2:
            return "waiting…"
        # Live estimate while streaming: one text delta is about one token.
        return f"~{(self._deltas - 1) / max(time.monotonic() - self._started, 1e-6):.1f} tok/s"


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= CHAIN_PART_CHARS else text[: CHAIN_PART_CHARS - 1] + "…"
