"""Pilot tests of the composer on the real engine and the shipped demo model (CPU)."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
from fake_engine import holding
from test_app_support import generate, run_async, wait_until
from textual.widgets import OptionList

from bobby_tui.app import BobbyApp
from bobby_tui.config import Config, PostProcess, Sampling
from bobby_tui.paths import db_path
from bobby_tui.service import load_engine
from bobby_tui.storage import Store

PROMPT = "Write a post about the sea"
SIZE = (120, 40)


@pytest.fixture
def demo() -> tuple[Path, Path]:
    from bobby_tui.demo import DEMO_ADAPTER_DIR, DEMO_MODEL_DIR

    return DEMO_MODEL_DIR, DEMO_ADAPTER_DIR


@pytest.fixture(autouse=True)
def fixed_seeds(monkeypatch):
    """Each draft's seed comes from random.randrange: fixed, every run decodes the same text."""
    seeds = iter(range(1000, 2000))
    monkeypatch.setattr(random, "randrange", lambda stop: next(seeds))


def quick_config(max_tokens: int = 32) -> Config:
    # no retries of short drafts: one decode per draft keeps the tests fast
    return Config(sampling=Sampling(max_tokens=max_tokens), postprocess=PostProcess(min_length=0))


def composer_app(demo, config: Config | None = None) -> BobbyApp:
    model_dir, adapter_dir = demo
    return BobbyApp(config or quick_config(), model_dir, adapter_dir)


def stored() -> list:
    store = Store(db_path())
    try:
        return store.history()
    finally:
        store.close()


async def type_prompt(pilot, text: str) -> None:
    await pilot.press(*text)


def body_text(card) -> str:
    return str(card.query_one(".draft-body").render())


@run_async
async def test_a_typed_prompt_generates_a_draft_that_streams_into_the_drafts_pane(demo):
    app = composer_app(demo)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await type_prompt(pilot, PROMPT)
        assert screen.editor.text == PROMPT
        await generate(pilot)
        (card,) = screen.drafts.cards
        assert card.text.strip()
        assert card.text in body_text(card)
        assert screen.decode_tok_s > 0
    (record,) = stored()
    assert record.prompt == PROMPT and record.text == card.text
    assert record.model == demo[0].name


@run_async
async def test_loading_reports_progress_and_an_empty_prompt_uses_the_default(demo):
    app = composer_app(demo)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.screen.state == "ready")
        assert app.screen.load_phase == "warming up"  # the last phase before ready
        assert not app.screen.query_one("#load-progress").display
        await generate(pilot)
    assert stored()[0].prompt == Config().default_prompt


@run_async
async def test_cancel_mid_stream_stops_within_a_token_and_keeps_the_partial_draft(demo):
    gate, deltas_after_gate = threading.Event(), []
    model_dir, adapter_dir = demo
    loader = holding(load_engine, gate, PROMPT, deltas_after_gate)
    app = BobbyApp(quick_config(max_tokens=280), model_dir, adapter_dir, loader=loader)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await type_prompt(pilot, PROMPT)
        await pilot.press("f5")
        await wait_until(pilot, lambda: screen.drafts.cards and screen.drafts.cards[0].text)
        streamed = screen.drafts.cards[0].text
        await pilot.press("escape")
        gate.set()
        await wait_until(pilot, lambda: screen.job is None)
        assert len(deltas_after_gate) <= 1  # stopped within one token
        (card,) = screen.drafts.cards
        assert card.finish_reason == "cancelled"
        assert card.text.strip()
        assert "cancelled" in str(card.query_one(".draft-header").render())
    (record,) = stored()
    assert record.finish_reason == "cancelled" and record.generated_tokens < 280
    assert record.raw_text in (streamed, streamed + "".join(d.text for d in deltas_after_gate))
    assert record.text == card.text


@run_async
async def test_spread_decodes_one_draft_per_temperature(demo):
    temperatures = [0.7, 0.95, 1.2]
    config = quick_config()
    config.sampling.spread = temperatures
    app = composer_app(demo, config)
    async with app.run_test(size=SIZE) as pilot:
        await type_prompt(pilot, PROMPT)
        await generate(pilot, "f6")
        cards = app.screen.drafts.cards
        assert [card.temperature for card in cards] == temperatures
        assert all(card.text for card in cards)
        headers = [str(card.query_one(".draft-header").render()) for card in cards]
        assert all(f"temp {t:.2f}" in header for header, t in zip(headers, temperatures, strict=True))
        assert app.screen.query_one("#draft-cards").has_class("-side-by-side")  # 120 columns hold 3 drafts
    assert sorted(record.temperature for record in stored()) == temperatures


@run_async
async def test_a_favorite_shows_in_the_history_of_a_new_app_instance(demo):
    app = composer_app(demo)
    async with app.run_test(size=SIZE) as pilot:
        await type_prompt(pilot, PROMPT)
        await generate(pilot)
        await pilot.press("f3")
        favorite = app.screen.drafts.selected.text
    app = composer_app(demo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        options = app.screen.query_one("#history-list", OptionList)
        assert options.option_count == 1
        label = str(options.get_option_at_index(0).prompt)
        assert "★" in label and " ".join(favorite.split())[:30] in label
        options.focus()
        await pilot.press("enter")  # selecting it shows it and puts its prompt back in the editor
        await pilot.pause()
        assert app.screen.editor.text == PROMPT
        assert app.screen.drafts.cards[0].text == favorite


@run_async
async def test_temperature_keys_change_the_shown_value_and_the_next_drafts_temperature(demo):
    app = composer_app(demo)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await pilot.press("f8", "f8", "f8", "f7")  # 0.95 + 0.10
        assert "temp 1.05" in str(screen.query_one("#status-text").render())
        await pilot.press("[")  # while the editor has focus a bracket is text, not a key binding
        assert screen.editor.text == "[" and screen.temperature == 1.05
        await generate(pilot)
        assert screen.drafts.cards[0].temperature == 1.05
    assert stored()[0].temperature == 1.05


@run_async
async def test_a_model_that_does_not_load_is_one_message_and_the_app_stays_open(tmp_path):
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    app = BobbyApp(quick_config(), broken, None)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await wait_until(pilot, lambda: app.screen.state == "failed")
        (note,) = [n for n in app._notifications if n.severity == "error"]
        assert str(broken) in note.message and "\n" not in note.message
        await type_prompt(pilot, "still here")
        assert app.screen.editor.text == "still here"
        assert app.is_running


@run_async
async def test_the_adapter_toggle_reruns_compare_base_and_fine_tune_on_one_seed(demo):
    app = composer_app(demo)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await type_prompt(pilot, PROMPT)
        await generate(pilot)
        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: not screen.adapter_enabled)
        await generate(pilot, "ctrl+r")
    base, tuned = stored()  # newest first
    assert (base.seed, base.prompt, base.temperature) == (tuned.seed, tuned.prompt, tuned.temperature)
    assert tuned.adapter == demo[1].name and base.adapter is None
