"""What a new user and an adversary broke in the composer (issue 13), driven with pilot and the fake engine."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
from fake_engine import FakeEngine, failing_loader, fake_loader
from test_app_support import generate, notes, run_async, wait_until
from textual.widgets import HelpPanel, OptionList

from bobby_tui.app import BobbyApp
from bobby_tui.config import Config, PostProcess
from bobby_tui.paths import config_path, db_path
from bobby_tui.storage import Store
from inference import InferenceError

SIZE = (120, 40)
MODEL, ADAPTER = Path("/models/demo"), Path("/models/lora")


def quick_config(**overrides) -> Config:
    return Config(postprocess=PostProcess(min_length=0), **overrides)


def fake_app(config: Config | None = None, engine: FakeEngine | None = None, loader=None,
             model: Path = MODEL, warning: str | None = None) -> BobbyApp:
    return BobbyApp(config or quick_config(), model, ADAPTER, config_warning=warning,
                    loader=loader or fake_loader(engine or FakeEngine()))


def stored() -> list:
    with Store(db_path()) as store:
        return store.history(limit=-1)


def status_text(app) -> str:
    return str(app.screen.query_one("#status-text").render())


def header(card) -> str:
    return str(card.query_one(".draft-header").render())


# --- 1: any failure of the external editor resumes the app and is one message --------------------------------


@pytest.mark.parametrize(
    "editor, problem",
    [
        ("no-such-editor-anywhere", "not found on PATH"),
        ('vim "unbalanced', "not a command line"),
        ("   ", "no command in it"),
        ("{tmp}/notes.txt", "not an executable file"),
    ],
)
@run_async
async def test_an_unusable_editor_is_one_message_and_the_app_goes_on(editor, problem, tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("not a program\n")
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", editor.format(tmp=tmp_path))
    app = fake_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.press(*"keep me")
        await pilot.press("ctrl+o")
        await pilot.pause()
        (error,) = notes(app, "error")
        assert problem in error and "$EDITOR" in error and "\n" not in error
        await pilot.press(*" still")
        assert app.screen.editor.text == "keep me still"


@run_async
async def test_an_editor_that_fails_to_start_inside_suspend_still_resumes_the_app(tmp_path, monkeypatch):
    script = tmp_path / "editor"
    script.write_text("#!/no/such/interpreter\n")  # exists and is executable, but exec fails (ENOENT)
    script.chmod(0o755)
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", str(script))
    app = fake_app()
    resumed = []

    @contextlib.contextmanager
    def suspend():  # like Textual's: the terminal comes back only when the block ends without an exception
        yield
        resumed.append(True)

    async with app.run_test(size=SIZE, notifications=True) as pilot:
        monkeypatch.setattr(app, "suspend", suspend)
        await pilot.press(*"draft", "ctrl+o")
        await pilot.pause()
        assert resumed == [True]
        (error,) = notes(app, "error")
        assert error.startswith("cannot run 'editor' ($EDITOR): ") and "prompt is unchanged" in error
        assert app.screen.editor.text == "draft"


# --- 2: no user-controlled text is ever parsed as markup ---------------------------------------------------------


ODD = "[bf16] [/b] [red]x[/]"


@run_async
async def test_paths_and_prompts_with_markup_characters_show_as_typed(monkeypatch):
    model = Path(f"/models/{ODD}/qwen [bf16] [red]x")  # the status bar shows the directory's name
    loader = failing_loader(InferenceError(model / "config.json", f"no such file {ODD}"))
    config = quick_config(default_prompt=f"Default {ODD}")
    app = fake_app(config, loader=loader, model=model, warning=f"{config_path()}: unknown key '{ODD}'")
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await wait_until(pilot, lambda: app.screen.state == "failed")
        await pilot.pause()
        messages = notes(app)
        assert any(f"{model}/config.json: no such file {ODD}" in m for m in messages)
        assert any(f"unknown key '{ODD}'" in m for m in messages)
        assert not any(n.markup for n in app._notifications)
        assert "qwen [bf16] [red]x" in status_text(app)
        assert ODD in str(app.screen.query_one(".drafts-hint").render())
        assert app.is_running  # no MarkupError


@run_async
async def test_a_model_name_and_a_prompt_with_markup_characters_in_cards_and_history():
    engine = FakeEngine(words=["Post", ODD], model_name=f"qwen-{ODD}")
    app = fake_app(engine=engine)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await wait_until(pilot, lambda: app.screen.state == "ready")
        assert f"qwen-{ODD}" in status_text(app)
        await pilot.press(*f"About {ODD}")
        await generate(pilot)
        (card,) = app.screen.drafts.cards
        assert ODD in str(card.query_one(".draft-body").render())
        await pilot.press("f2")
        await app.screen.workers.wait_for_complete()
        await pilot.pause()
        label = str(app.screen.query_one("#history-list", OptionList).get_option_at_index(0).prompt)
        assert f"Post {ODD}" in label and f"About {ODD}" in label


# --- 9: rerun reruns what is on screen; a spread rerun honours the temperature keys ------------------------------


@run_async
async def test_rerun_after_reopening_a_history_item_reruns_the_reopened_one():
    engine = FakeEngine()
    app = fake_app(engine=engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"older")
        await generate(pilot)
        for _ in "older":
            await pilot.press("backspace")
        await pilot.press(*"newer")
        await generate(pilot)
        await pilot.press("f2")
        await app.screen.workers.wait_for_complete()
        await pilot.pause()
        history = app.screen.query_one("#history-list", OptionList)
        history.focus()
        await pilot.press("down", "enter")  # the older one (newest first)
        await pilot.pause()
        assert app.screen.editor.text == "older"
        await generate(pilot, "ctrl+r")
    older, newer, rerun = engine.requests
    assert rerun.prompt == older.prompt == "user:older|assistant:"
    assert [p.seed for p in rerun.drafts] == [p.seed for p in older.drafts]


@run_async
async def test_a_spread_and_its_rerun_follow_the_temperature_keys():
    engine = FakeEngine()
    config = quick_config()
    config.sampling.spread = [0.7, 0.95, 1.2]
    app = fake_app(config, engine=engine)
    async with app.run_test(size=SIZE) as pilot:
        await generate(pilot, "f6")
        await pilot.press("f8", "f8")  # +0.10
        await generate(pilot, "ctrl+r")
    spread, rerun = engine.requests
    assert [p.temperature for p in spread.drafts] == [0.7, 0.95, 1.2]
    assert [p.temperature for p in rerun.drafts] == [0.8, 1.05, 1.3]
    assert [p.seed for p in rerun.drafts] == [p.seed for p in spread.drafts]


# --- 11: [keys] refuses unknown names and collisions; the hint follows remaps; F1 / ? / escape --------------------


@run_async
async def test_an_unknown_key_name_is_refused_with_one_warning_and_the_default_stays():
    app = fake_app(quick_config(keys={"spread": "banana"}))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.pause()
        (warning,) = notes(app, "warning")
        assert "'banana' is not a key name" in warning and "Spread keeps f6" in warning
        await generate(pilot, "f6")
        assert len(app.screen.drafts.cards) == 3


@run_async
async def test_a_key_taken_from_another_action_is_refused_and_both_keep_working():
    app = fake_app(quick_config(keys={"generate": "f2", "regenerate": "ctrl+q"}))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.pause()
        warnings = notes(app, "warning")
        assert len(warnings) == 2
        assert any("f2 is already History's key" in w and "Generate keeps f5" in w for w in warnings)
        assert any("ctrl+q is already Quit's key" in w for w in warnings)
        await pilot.press("f2")
        assert app.screen.query_one("#history").display
        await pilot.press("f2")
        await generate(pilot, "f5")
        assert len(app.screen.drafts.cards) == 1


@run_async
async def test_swapping_two_keys_is_no_collision_and_the_hint_names_the_remapped_keys():
    app = fake_app(quick_config(keys={"generate": "f6", "spread": "f5", "show_keys": "ctrl+k"}))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.pause()
        assert notes(app, "warning") == []
        hint = str(app.screen.query_one(".drafts-hint").render())
        assert "then F6 for a draft or F5 for a spread" in hint and "^k: every key" in hint
        await generate(pilot, "f5")
        assert len(app.screen.drafts.cards) == 3


@run_async
async def test_f1_and_question_mark_open_the_keys_panel_and_escape_closes_it():
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f1")
        await pilot.pause()
        assert app.screen.query(HelpPanel)
        await pilot.press("escape")
        await pilot.pause()
        assert not app.screen.query(HelpPanel)
        await pilot.press("tab")  # out of the editor, where ? is text
        await pilot.press("question_mark")
        await pilot.pause()
        assert app.screen.query(HelpPanel)
        await pilot.press("escape")
        await pilot.pause()
        assert not app.screen.query(HelpPanel)


# --- 12: the load shows its real phases ------------------------------------------------------------------------


@run_async
async def test_the_status_bar_says_warming_up_while_the_engine_warms_up():
    gate = threading.Event()
    engine = FakeEngine(warmup_gate=gate)
    app = fake_app(engine=engine)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: "warming up" in status_text(app))
        assert app.screen.state == "loading" and engine.warmed_up == []
        gate.set()
        await wait_until(pilot, lambda: app.screen.state == "ready")
        assert status_text(app).startswith("ready · ")
    assert engine.warmed_up == [(1, 3)]


# --- 14: copy says what it did ------------------------------------------------------------------------------------


def fake_tool(folder: Path, name: str, out: Path) -> None:
    folder.mkdir(exist_ok=True)
    tool = folder / name
    tool.write_text(f"#!/bin/sh\ncat > {out}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)


@run_async
async def test_copy_sends_osc_52_and_uses_the_system_clipboard_tool(tmp_path, monkeypatch):
    copied = tmp_path / "clipboard.txt"
    fake_tool(tmp_path / "bin", "xclip", copied)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}/usr/bin:/bin")
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    app = fake_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await generate(pilot)
        await pilot.press("f4")
        await wait_until(pilot, lambda: notes(app))
        card = app.screen.drafts.selected
        assert app.clipboard == card.text  # the OSC 52 copy
        assert copied.read_text() == card.text
        (note,) = notes(app)
        assert note == f"Draft #1 ({len(card.text)} characters) sent to the terminal (OSC 52) and copied with xclip"


@run_async
async def test_copy_without_a_clipboard_tool_does_not_claim_success(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    app = fake_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await generate(pilot)
        await pilot.press("f4")
        await wait_until(pilot, lambda: notes(app))
        (note,) = notes(app, "warning")
        assert "sent to the terminal (OSC 52)" in note and "may not pass it on" in note and "xclip" in note
        assert "Copied" not in note


# --- 30: the drafts are the user's data ---------------------------------------------------------------------------


@run_async
async def test_drafts_that_cannot_be_saved_stay_on_screen_with_one_line_saying_so():
    app = fake_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await generate(pilot)
        db_path().unlink()  # the history removed under the running app
        await generate(pilot, "f6")
        cards = app.screen.drafts.cards
        assert len(cards) == 3 and all(card.text for card in cards)
        assert all("not saved" in header(card) for card in cards)
        (error,) = notes(app, "error")  # one line for the three drafts
        assert error.startswith("Not saved to history: ") and "removed" in error and "\n" not in error


@run_async
async def test_quitting_mid_generation_saves_the_partial_drafts():
    engine = FakeEngine(hold_until_cancelled=True)
    app = fake_app(engine=engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"quit now", "f6")
        await wait_until(pilot, engine.started.is_set)
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: not app.is_running)
    records = stored()
    assert len(records) == 3 and {r.finish_reason for r in records} == {"cancelled"}
    assert all(len(r.text.split()) == 1 for r in records)  # what had streamed: one token each
    assert {r.prompt for r in records} == {"quit now"}


# --- 34: a history file that is not ours is refused, untouched ------------------------------------------------


@run_async
async def test_a_foreign_sqlite_file_at_the_history_path_is_one_error_and_left_as_it_was():
    path = db_path()
    path.parent.mkdir(parents=True)
    con = sqlite3.connect(path)
    con.executescript("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
    con.close()
    before = path.read_bytes()
    app = fake_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await generate(pilot)
        (error,) = notes(app, "error")
        assert str(path) in error and "another program" in error and "history is off" in error
        assert app.screen.drafts.cards[0].text  # generating still works
    assert path.read_bytes() == before



# --- 10: small terminals keep every action reachable -------------------------------------------------------------


@pytest.mark.parametrize("size", [(80, 24), (60, 20)])
@run_async
async def test_in_a_small_terminal_f1_is_on_screen_and_lists_every_action(size):
    from textual.widgets._footer import FooterKey
    from textual.widgets._key_panel import BindingsTable

    from bobby_tui.screens.bindings import COMPOSER_BINDINGS

    app = fake_app()
    async with app.run_test(size=size) as pilot:
        await wait_until(pilot, lambda: app.screen.state == "ready")
        await pilot.pause()
        first = app.screen.query_one("Footer").query(FooterKey).first()
        assert (first.key_display, first.description) == ("F1", "Keys")
        assert first.region.right <= size[0] and first.region.y == size[1] - 1  # on screen, in the bottom row
        await generate(pilot)
        await pilot.press("f1")
        await pilot.pause()
        table = app.screen.query_one(BindingsTable).render_bindings_table()
        described = {cell.plain for cell in table.columns[1].cells}
        # escape cancels only while generating; delete and ctrl+z act in the history list (the focused editor's own
        # delete and undo are what the panel lists for those keys here)
        idle = [b for b in COMPOSER_BINDINGS if b.action not in ("cancel", "delete_history", "undo_delete")]
        missing = [b.action for b in idle if not any(b.tooltip in d for d in described)]
        assert missing == []
        status = str(app.screen.query_one("#status-text").render())
        assert "42.0 tok/s" in status and "temp 0.95" in status  # the speed is never the part cut off
