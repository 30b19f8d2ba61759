"""The drafts of the current generation, side by side when there is room, stacked otherwise; one is selected."""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.app import ComposeResult
from textual.containers import Container, VerticalScroll
from textual.message import Message
from textual.widgets import Static

from bobby_tui.widgets.draft_card import DraftCard

REDRAWS_PER_SECOND = 20  # streamed text is buffered and redrawn at most this often, however fast tokens come
SIDE_BY_SIDE_MIN_WIDTH = 36  # columns per draft needed to put drafts side by side


class DraftsPane(VerticalScroll):
    """Holds DraftCards; `select` picks the one that favorite / copy act on."""

    @dataclass
    class Selected(Message):
        card: DraftCard | None

    def __init__(self, hint: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self._hint = hint
        self.selected: DraftCard | None = None

    def compose(self) -> ComposeResult:
        yield Static(self._hint, classes="drafts-hint", markup=False)
        yield Container(id="draft-cards")

    def on_mount(self) -> None:
        self.set_interval(1 / REDRAWS_PER_SECOND, self.flush)

    def set_hint(self, hint: str) -> None:
        """What the pane says while it has no drafts."""
        self.query_one(".drafts-hint", Static).update(hint)

    @property
    def cards(self) -> list[DraftCard]:
        return list(self.query(DraftCard))

    def card(self, number: int) -> DraftCard | None:
        """The card of draft `number` (0-based, as the engine counts)."""
        cards = self.cards
        return cards[number] if 0 <= number < len(cards) else None

    async def show_cards(self, cards: list[DraftCard]) -> None:
        """Replace the drafts on screen with `cards` and select the first."""
        box = self.query_one("#draft-cards", Container)
        await box.remove_children()
        await box.mount_all(cards)
        self.query_one(".drafts-hint").display = not cards
        self._arrange()
        self.select(cards[0] if cards else None)

    def flush(self) -> None:
        for card in self.cards:
            card.flush()

    def select(self, card: DraftCard | None) -> None:
        for other in self.cards:
            other.set_class(other is card, "-selected")
        self.selected = card
        self.post_message(self.Selected(card))

    def select_next(self, step: int) -> None:
        cards = self.cards
        if not cards:
            return
        index = cards.index(self.selected) if self.selected in cards else 0
        self.select(cards[(index + step) % len(cards)])

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        if isinstance(event.widget, DraftCard):
            self.select(event.widget)

    def on_resize(self) -> None:
        self._arrange()

    def _arrange(self) -> None:
        count = len(self.cards)
        side_by_side = count > 1 and self.size.width >= count * SIDE_BY_SIDE_MIN_WIDTH
        self.query_one("#draft-cards").set_class(side_by_side, "-side-by-side")
