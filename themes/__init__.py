"""The composer's themes and its stylesheet, shipped in the wheel.

Colours live in Textual `Theme`s; `bobby.tcss` refers to them only through theme variables ($primary, $warning...),
so every theme restyles the whole app.
"""

from __future__ import annotations

from pathlib import Path

from textual.theme import Theme

STYLESHEET = Path(__file__).with_name("bobby.tcss")

DEFAULT_THEME = "bobby-dark"

THEMES: tuple[Theme, ...] = (
    Theme(
        name="bobby-dark",
        primary="#7aa2f7",
        secondary="#bb9af7",
        accent="#ff9e64",
        warning="#e0af68",
        error="#f7768e",
        success="#9ece6a",
        foreground="#c0caf5",
        background="#16161e",
        surface="#1f2335",
        panel="#292e42",
        dark=True,
    ),
    Theme(
        name="bobby-light",
        primary="#2e5cb8",
        secondary="#7847bd",
        accent="#c25e00",
        warning="#b35900",
        error="#c4314b",
        success="#3d7a1f",
        foreground="#24292f",
        background="#f6f8fa",
        surface="#ffffff",
        panel="#e3e8ee",
        dark=False,
    ),
    Theme(
        name="bobby-solarized",
        primary="#268bd2",
        secondary="#6c71c4",
        accent="#2aa198",
        warning="#cb4b16",
        error="#dc322f",
        success="#859900",
        foreground="#93a1a1",
        background="#002b36",
        surface="#073642",
        panel="#0d4352",
        dark=True,
    ),
)

THEME_NAMES: tuple[str, ...] = tuple(theme.name for theme in THEMES)
