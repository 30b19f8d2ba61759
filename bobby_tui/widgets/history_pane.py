"""Past generations, newest first, favorites starred, filtered by a search box."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import Input, OptionList
from textual.widgets.option_list import Option

from bobby_tui.storage import GenerationRecord

PREVIEW_CHARS = 60


class HistoryPane(Vertical):
    """Shows records handed to `show`; asks for new ones with Searched, reports a pick with Picked."""

    @dataclass
    class Searched(Message):
        query: str

    @dataclass
    class Picked(Message):
        record: GenerationRecord

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._records: dict[str, GenerationRecord] = {}

    def compose(self) -> ComposeResult:
        yield Input(placeholder="search history…", id="history-search")
        yield OptionList(id="history-list")

    @property
    def options(self) -> OptionList:
        return self.query_one("#history-list", OptionList)

    @property
    def highlighted(self) -> GenerationRecord | None:
        """The record under the list's cursor."""
        options = self.options
        if options.highlighted is None or options.option_count == 0:
            return None
        return self._records.get(options.get_option_at_index(options.highlighted).id or "")

    @property
    def query_text(self) -> str:
        return self.query_one("#history-search", Input).value.strip()

    def show(self, records: list[GenerationRecord]) -> None:
        self._records = {str(rec.id): rec for rec in records}
        options = self.options
        keep = options.highlighted  # a delete leaves the cursor where it was, on the next row
        options.clear_options()
        options.add_options(Option(_label(rec), id=str(rec.id)) for rec in records)
        options.highlighted = min(keep or 0, len(records) - 1) if records else None

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.Searched(event.value.strip()))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.query_one("#history-list", OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        record = self._records.get(event.option_id or "")
        if record is not None:
            self.post_message(self.Picked(record))


def _label(rec: GenerationRecord) -> Content:
    star = "★ " if rec.favorite else "  "
    return Content.assemble(
        (star, "$accent"),
        (f"{rec.temperature:.2f} ", "dim"),
        (f"[{rec.persona}] " if rec.persona else "", "$secondary"),
        ("↳ " if rec.parent_id is not None else "", "dim"),
        _one_line(rec.text) or "(empty)",
        ("\n  " + _one_line(rec.prompt), "dim italic"),
    )


def _one_line(text: str) -> str:
    """`text` on one line, cut to PREVIEW_CHARS."""
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"
