"""Composing, not only re-rolling: refine, edit and continue, personas, adapters and models, history delete and undo,
post length. Pilot tests with the fake engine, whose rendered prompts show the conversation it was given."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fake_engine import FakeEngine, fake_loader
from test_app_support import generate, notes, run_async, wait_until
from textual.app import App
from textual.command import CommandList

import bobby_tui.screens.composer as composer_screen
from bobby_tui.app import BobbyApp
from bobby_tui.config import Config, Persona, PostProcess
from bobby_tui.paths import db_path
from bobby_tui.storage import GenerationRecord, Store
from bobby_tui.widgets.draft_card import DraftCard

SIZE = (120, 40)


@pytest.fixture(autouse=True)
def fixed_seeds(monkeypatch):
    seeds = iter(range(1000, 2000))
    monkeypatch.setattr(random, "randrange", lambda stop: next(seeds))


def plain_config(**settings) -> Config:
    return Config(postprocess=PostProcess(min_length=0), **settings)


def fake_app(config: Config | None = None, engine: FakeEngine | None = None, loader=None) -> BobbyApp:
    loader = loader or fake_loader(engine or FakeEngine())
    return BobbyApp(config or plain_config(), Path("/models/demo"), Path("/models/lora"), loader=loader)


def stored() -> list[GenerationRecord]:
    with Store(db_path()) as store:
        return store.history(limit=-1)


def status(app) -> str:
    return str(app.screen.query_one("#status-text").render())


def chain(card) -> str:
    return str(card.query_one(".draft-chain").render())


async def retype(pilot, text: str) -> None:
    pilot.app.screen.editor.text = ""
    await pilot.press(*text)


async def palette(pilot, query: str) -> None:
    """Run the first command palette entry that matches `query`."""
    await pilot.press("ctrl+p", *query)
    results = pilot.app.screen.query_one(CommandList)
    await wait_until(pilot, lambda: results.option_count > 0)
    await pilot.press("enter")
    await pilot.pause()


@run_async
async def test_refine_continues_the_picked_drafts_conversation_and_rerun_repeats_it():
    engine = FakeEngine()
    app = fake_app(engine=engine)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await pilot.press(*"Write about the sea")
        await generate(pilot)
        (first,) = screen.drafts.cards
        await retype(pilot, "make it shorter")
        await generate(pilot, "ctrl+n")
        (refined,) = screen.drafts.cards
        assert engine.requests[1].prompt == (
            f"user:Write about the sea|assistant:{first.text}|user:make it shorter|assistant:"
        )
        assert chain(refined) == "Write about the sea → Shipped a tiny language… → make it shorter →"
        assert refined.display and refined.query_one(".draft-chain").display
        await generate(pilot, "ctrl+r")  # rerun: the same refinement, the same seed
        assert engine.requests[2].prompt == engine.requests[1].prompt
        assert engine.requests[2].drafts[0].seed == engine.requests[1].drafts[0].seed
        rerun = screen.drafts.cards[0].text
        await generate(pilot, "ctrl+f")  # the rerun's draft refined again, as a spread: three turns in
        assert len(screen.drafts.cards) == 3
        assert engine.requests[3].prompt == (
            f"{engine.requests[1].prompt}{rerun}|user:make it shorter|assistant:"
        )
        assert len(engine.requests[3].drafts) == 3
    rows = stored()
    original = rows[-1]
    refinement = rows[-2]
    assert original.parent_id is None and refinement.parent_id == original.id
    assert refinement.messages == [
        {"role": "user", "content": "Write about the sea"},
        {"role": "assistant", "content": original.text},
        {"role": "user", "content": "make it shorter"},
    ]


@run_async
async def test_refine_needs_a_picked_draft_and_an_instruction():
    engine = FakeEngine()
    app = fake_app(engine=engine)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.press(*"an instruction", "ctrl+n")
        await pilot.pause()
        assert "Pick a finished draft to refine" in notes(app)[-1]
        await generate(pilot)
        app.screen.editor.text = ""
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert "Type an instruction" in notes(app)[-1]
    assert len(engine.requests) == 1


@run_async
async def test_edit_and_continue_starts_the_new_draft_with_the_edited_text(monkeypatch):
    edited = []

    def fake_editor(app, text, what="prompt"):
        edited.append((text, what))
        return "Shipped a tiny model, then"

    monkeypatch.setattr(composer_screen, "edit_in_editor", fake_editor)
    engine = FakeEngine()
    app = fake_app(engine=engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"Launch day")
        await generate(pilot)
        first = app.screen.drafts.cards[0].text
        await generate(pilot, "ctrl+s")
        (card,) = app.screen.drafts.cards
        assert edited == [(first, "draft")]
        assert engine.requests[1].prompt == "user:Launch day|assistant:Shipped a tiny model, then"
        assert card.text.startswith("Shipped a tiny model, then")
        assert "continues your edit" in chain(card)
    continued = stored()[0]
    assert continued.prefill == "Shipped a tiny model, then" and continued.text == card.text


PERSONAS = {
    "terse": Persona("terse", system_prompt="Be terse.", temperature=0.5, post_limit=100),
    "loud": Persona("loud", system_prompt="SHOUT.", top_p=0.6),
}


@run_async
async def test_a_persona_applies_its_settings_shows_in_the_status_bar_and_is_recorded():
    engine = FakeEngine()
    app = fake_app(plain_config(personas=PERSONAS), engine=engine)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert "persona" not in status(app)
        await pilot.press("ctrl+l")  # the first persona
        assert "persona terse" in status(app) and "temp 0.50" in status(app)
        await generate(pilot)
        assert engine.requests[0].prompt.startswith("system:Be terse.|")
        assert screen.drafts.cards[0].post_limit == 100
        await palette(pilot, "Persona: loud")
        assert "persona loud" in status(app) and "top_p 0.60" in status(app)
        await generate(pilot)
        assert engine.requests[1].prompt.startswith("system:SHOUT.|")
        await palette(pilot, "Persona: none")
        assert "persona" not in status(app)
        await generate(pilot)
        assert engine.requests[2].prompt.startswith("user:")
    assert [r.persona for r in stored()] == [None, "loud", "terse"]


@run_async
async def test_the_configured_persona_is_on_at_start():
    app = fake_app(plain_config(personas=PERSONAS, persona="loud"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.screen.persona == "loud" and "persona loud" in status(app)


@run_async
async def test_adapters_from_the_adapters_folder_are_picked_in_the_palette(tmp_path):
    folder = tmp_path / "adapters"
    for name in ("lora-sea", "broken"):
        (folder / name).mkdir(parents=True)
    engine = FakeEngine()
    app = fake_app(plain_config(adapters_dir=folder), engine=engine)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: screen.state == "ready")
        await palette(pilot, "Adapter: lora-sea")
        await wait_until(pilot, lambda: screen.adapter_name == "lora-sea")
        assert "adapter lora-sea (on)" in status(app)
        assert engine.adapters["lora-sea"] == folder / "lora-sea"
        await generate(pilot)
        await palette(pilot, "Adapter: broken")
        await wait_until(pilot, lambda: notes(app, "error"))
        assert screen.adapter_name == "lora-sea"  # a folder that does not load leaves the adapter as it was
        assert str(folder / "broken") in notes(app, "error")[-1]
        await palette(pilot, "Adapter: none")
        await wait_until(pilot, lambda: not screen.adapter_enabled)
        await generate(pilot)
    assert [r.adapter for r in stored()] == [None, "lora-sea"]


@run_async
async def test_a_model_from_the_models_folder_loads_in_the_background_without_a_restart(tmp_path):
    folder = tmp_path / "models"
    for name in ("small", "other"):
        (folder / name).mkdir(parents=True)
        (folder / name / "config.json").write_text("{}")
    engines = {"demo": FakeEngine(model_name="demo"), "other": FakeEngine(model_name="other", adapter_name="")}
    loaded = []

    def loader(model_dir, adapter_dir, progress):
        loaded.append((model_dir, adapter_dir))
        return fake_loader(engines[model_dir.name])(model_dir, adapter_dir, progress)

    app = fake_app(plain_config(models_dir=folder), loader=loader)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: screen.state == "ready")
        await palette(pilot, "Model: other")
        assert "demo is unloaded meanwhile" in notes(app)[-1]
        await wait_until(pilot, lambda: screen.state == "ready")
        assert loaded[-1] == (folder / "other", None)
        assert screen.model_name == "other" and "adapter none" in status(app)
        await generate(pilot)
    assert stored()[0].model == "other"


@run_async
async def test_history_rows_are_deleted_and_the_last_delete_is_undone():
    app = fake_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        screen = app.screen
        await pilot.press(*"three")
        await generate(pilot, "f6")
        await pilot.press("f2")
        await screen.workers.wait_for_complete()
        await pilot.pause()
        history = screen.history_pane
        history.options.focus()
        await pilot.pause()
        doomed = history.highlighted
        await pilot.press("delete")
        await wait_until(pilot, lambda: history.options.option_count == 2)
        assert "ctrl+z" in notes(app)[-1].lower() or "^z" in notes(app)[-1]
        assert doomed.id not in {r.id for r in stored()}
        await pilot.press("ctrl+z")
        await wait_until(pilot, lambda: history.options.option_count == 3)
    assert doomed.id in {r.id for r in stored()}
    assert next(r for r in stored() if r.id == doomed.id).text == doomed.text


@run_async
async def test_prune_removes_old_unfavorited_rows_and_undo_brings_them_back():
    old = (datetime.now(timezone.utc) - timedelta(days=40)).isoformat(timespec="seconds")
    with Store(db_path()) as store:
        ids = [store.add(GenerationRecord("old", f"old draft {i}", 0.7, 0.9, i, "m", None, 1, 1, 1.0, 1.0, "stop",
                                          created_at=old, favorite=i == 0)) for i in range(3)]
    app = fake_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await generate(pilot)  # a new row: not pruned
        await palette(pilot, "Prune history: unfavorited rows older than 30")
        await wait_until(pilot, lambda: len(stored()) == 2)
        assert "Deleted 2 rows (unfavorited, older than 30 days)" in notes(app)[-1]
        assert {r.id for r in stored()} >= {ids[0]}  # the favorite stays
        await palette(pilot, "Undo the last delete")
        await wait_until(pilot, lambda: len(stored()) == 4)


@run_async
async def test_the_history_search_finds_words_in_any_order_whatever_their_case_and_accents():
    with Store(db_path()) as store:
        for text in ("Un café au lait sur la plage.", "Tea time on the pier."):
            store.add(GenerationRecord("a post", text, 0.7, 0.9, 1, "m", None, 1, 1, 1.0, 1.0, "stop"))
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2", *"lait CAFE")  # not a substring: two words, another order, no accent
        await wait_until(pilot, lambda: app.screen.history_pane.options.option_count == 1)
        options = app.screen.history_pane.options
        assert "café au lait" in str(options.get_option_at_index(0).prompt)


@run_async
async def test_the_length_counts_graphemes_as_bluesky_does():
    class CardApp(App):
        def compose(self):
            yield DraftCard(1, 0.7, 42, post_limit=4)

    app = CardApp()
    async with app.run_test() as pilot:
        card = app.query_one(DraftCard)
        # a thumb with its skin tone, a family, e + combining accent, "!": 4 graphemes
        card.append("\U0001f44d\U0001f3fd\U0001f468\u200d\U0001f469\u200d\U0001f467e\u0301!")
        card.flush()
        await pilot.pause()
        assert "4 / 4" in str(card.query_one(".draft-meter").render()) and not card.has_class("-over")
        card.append("!")
        card.flush()
        await pilot.pause()
        assert card.has_class("-over")

