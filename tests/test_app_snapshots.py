"""Pictures of the main screen in every shipped theme, with a fixed token stream in place of the model.

Update them after a deliberate change with `pytest tests/test_app_snapshots.py --snapshot-update`, and look at
the report before committing.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from fake_engine import FakeEngine, fake_loader
from test_app_support import generate

from bobby_tui.app import BobbyApp
from bobby_tui.config import Config, PostProcess
from themes import THEME_NAMES

SIZE = (120, 36)


def spread_app(theme: str) -> BobbyApp:
    # A post limit the fake drafts overshoot (and no trimming to it), so the warning colour is in the picture.
    config = Config(theme=theme, post_limit=140, postprocess=PostProcess(enforce_limit=False))
    return BobbyApp(config, Path("/models/demo-qwen3"), Path("/models/demo-lora"), loader=fake_loader(FakeEngine()))


async def type_and_spread(pilot) -> None:
    await pilot.pause()  # the screen is up and its editor focused
    pilot.app.screen.editor.cursor_blink = False  # a blinking cursor is in the picture or not, by chance
    await pilot.press(*"Write about the sea")
    await generate(pilot, "f6")


@pytest.mark.parametrize("theme", THEME_NAMES)
def test_main_screen_after_a_spread(theme, snap_compare, monkeypatch):
    monkeypatch.setattr(random, "randrange", lambda stop: 4242)  # the seeds are in the picture
    assert snap_compare(spread_app(theme), run_before=type_and_spread, terminal_size=SIZE)


def test_history_pane(snap_compare, monkeypatch):
    monkeypatch.setattr(random, "randrange", lambda stop: 4242)

    async def spread_then_open_history(pilot) -> None:
        await type_and_spread(pilot)
        pilot.app.screen.query_one("#history-search").cursor_blink = False
        await pilot.press("f3", "f2")
        await pilot.app.screen.workers.wait_for_complete()
        await pilot.pause()

    assert snap_compare(spread_app("bobby-dark"), run_before=spread_then_open_history, terminal_size=SIZE)


SMALL_TERMINALS = [(80, 24), (60, 20)]


@pytest.mark.parametrize("size", SMALL_TERMINALS, ids=lambda size: f"{size[0]}x{size[1]}")
def test_a_spread_in_a_small_terminal(size, snap_compare, monkeypatch):
    monkeypatch.setattr(random, "randrange", lambda stop: 4242)
    assert snap_compare(spread_app("bobby-dark"), run_before=type_and_spread, terminal_size=size)


@pytest.mark.parametrize("size", SMALL_TERMINALS, ids=lambda size: f"{size[0]}x{size[1]}")
def test_the_history_in_a_small_terminal(size, snap_compare, monkeypatch):
    monkeypatch.setattr(random, "randrange", lambda stop: 4242)

    async def spread_then_open_history(pilot) -> None:
        await type_and_spread(pilot)
        pilot.app.screen.query_one("#history-search").cursor_blink = False
        await pilot.press("f2")
        await pilot.app.screen.workers.wait_for_complete()
        await pilot.pause()

    assert snap_compare(spread_app("bobby-dark"), run_before=spread_then_open_history, terminal_size=size)


@pytest.mark.parametrize("size", SMALL_TERMINALS, ids=lambda size: f"{size[0]}x{size[1]}")
def test_the_keys_panel_in_a_small_terminal(size, snap_compare):
    async def open_keys(pilot) -> None:
        await pilot.pause()
        pilot.app.screen.editor.cursor_blink = False
        await pilot.press("f1")
        await pilot.pause()

    assert snap_compare(spread_app("bobby-dark"), run_before=open_keys, terminal_size=size)
