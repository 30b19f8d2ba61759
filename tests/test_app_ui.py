"""The composer's UI behaviour (config, keys, themes, history, regenerate), the fake engine in place of the model."""

from __future__ import annotations

from pathlib import Path

from fake_engine import FakeEngine, fake_loader
from test_app_support import generate, run_async, wait_until
from textual.command import CommandList
from textual.widgets import OptionList

from bobby_tui.app import BobbyApp
from bobby_tui.config import Config, PostProcess, load_config
from bobby_tui.paths import config_path
from inference.api import SAMPLING_LIMITS

SIZE = (120, 40)


def fake_app(config: Config | None = None, engine: FakeEngine | None = None, warning: str | None = None) -> BobbyApp:
    config = config or Config(postprocess=PostProcess(min_length=0))
    loader = fake_loader(engine or FakeEngine())
    return BobbyApp(config, Path("/models/demo"), Path("/models/lora"), config_warning=warning, loader=loader)




def messages(app: BobbyApp, severity: str) -> list[str]:
    return [note.message for note in app._notifications if note.severity == severity]


@run_async
async def test_a_malformed_config_is_a_warning_in_the_app_which_starts_with_defaults():
    path = config_path()
    path.parent.mkdir(parents=True)
    path.write_text("theme = \n")
    config, warning = load_config()
    app = fake_app(config, warning=warning)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.pause()
        assert messages(app, "warning") == [warning]
        assert str(path) in warning
        assert app.theme == "bobby-dark"


@run_async
async def test_unknown_theme_and_key_actions_in_the_config_are_warnings():
    app = fake_app(Config(theme="neon", keys={"launch_rockets": "f1"}))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.pause()
        warnings = messages(app, "warning")
        assert any("'neon'" in w for w in warnings) and any("launch_rockets" in w for w in warnings)
        assert app.theme == "bobby-dark"


@run_async
async def test_keys_remapped_in_the_config_replace_the_defaults():
    app = fake_app(Config(keys={"generate": "ctrl+b"}, postprocess=PostProcess(min_length=0)))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5")
        await pilot.pause()
        assert app.screen.drafts.cards == []  # F5 no longer generates
        await generate(pilot, "ctrl+b")
        assert app.screen.drafts.cards[0].text
        commands = {command.help for command in app.get_system_commands(app.screen) if "Generate a" in command.title}
        assert commands == {"key: ^b"}


@run_async
async def test_the_switched_theme_is_remembered_in_the_config_file():
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f12")
        assert app.theme == "bobby-light"
    assert load_config()[0].theme == "bobby-light"


@run_async
async def test_rerun_repeats_the_last_prompt_and_seeds_at_the_current_temperature():
    engine = FakeEngine()
    app = fake_app(engine=engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"first")
        await generate(pilot)
        await pilot.press("backspace", *"changed", "f8")
        await generate(pilot, "ctrl+r")
    first, rerun = engine.requests
    assert rerun.prompt == first.prompt == "user:first|assistant:"
    assert [p.seed for p in rerun.drafts] == [p.seed for p in first.drafts]
    assert [p.temperature for p in rerun.drafts] == [1.0]


@run_async
async def test_history_search_filters_and_the_selected_draft_is_the_one_favorited_and_copied():
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await pilot.press(*"spread me")
        await generate(pilot, "f6")
        await pilot.press("ctrl+down", "f3", "f4")
        second = screen.drafts.cards[1]
        assert screen.drafts.selected is second and second.favorite
        assert app.clipboard == second.text
        await pilot.press("f2", *"Shipped nowhere")
        options = screen.query_one("#history-list", OptionList)
        await screen.workers.wait_for_complete()
        await pilot.pause()
        assert options.option_count == 0  # every word must be there
        screen.query_one("#history-search").value = "tiny Shipped"  # both words, in any order
        await wait_until(pilot, lambda: options.option_count == 3)


@run_async
async def test_a_draft_the_composer_rejects_as_too_short_starts_over_and_says_which_attempt_it_is():
    engine = FakeEngine(words=["Too", "short."])
    app = fake_app(Config(postprocess=PostProcess(min_length=80, retries=1)), engine=engine)
    async with app.run_test(size=SIZE) as pilot:
        await generate(pilot)
        (card,) = app.screen.drafts.cards
        assert len(engine.requests) == 2  # the first attempt and one retry
        assert card.attempt == 2 and card.text == "Too short."  # the retry's text only, not both
        assert "attempt 2" in str(card.query_one(".draft-header").render())


@run_async
async def test_the_command_palette_lists_the_composer_actions_with_their_keys_and_runs_them():
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+p", *"spread")
        results = app.screen.query_one(CommandList)
        await wait_until(pilot, lambda: results.option_count > 0)
        shown = str(results.get_option_at_index(0).prompt)
        assert "Spread: several drafts" in shown and "key: F6" in shown
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(app.screen.drafts.cards) == 3)


@run_async
async def test_the_sampling_keys_stop_at_the_engines_limits():
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await pilot.press(*["f7"] * 25, *["f10"] * 3)  # temperature down past 0, top_p up past 1
        assert (screen.temperature, screen.top_p) == (0.0, 1.0)
        await pilot.press(*["f9"] * 25)  # top_p's range is open at 0: it stops one step above
        assert screen.top_p == 0.05
        screen.temperature = 1e6  # any assignment is clamped, not only the keys'
        assert screen.temperature == SAMPLING_LIMITS["temperature"].high
        assert "temp 0.00" not in str(screen.query_one("#status-text").render())
