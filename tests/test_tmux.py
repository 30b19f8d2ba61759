"""The app in a real terminal: tmux runs `python -m bobby_tui` on the demo model, we type, and read the screen."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bobby_tui.paths import db_path
from bobby_tui.storage import Store

REPO = Path(__file__).resolve().parents[1]
TMUX = shutil.which("tmux")
DEADLINE_S = 300  # generous: the CI machine has 2 cores and loads the model from scratch
PROMPT = "Write a post about the sea"

pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed")


class Terminal:
    """A tmux pane (120x40) on a private tmux server (-L), so tests neither see nor disturb the user's sessions."""

    def __init__(self, command: str, size: tuple[int, int] = (120, 40)) -> None:
        self.name = f"bobby-test-{uuid.uuid4().hex[:8]}"
        self._tmux("new-session", "-d", "-s", self.name, "-x", str(size[0]), "-y", str(size[1]), command)

    def _tmux(self, *args: str) -> str:
        return subprocess.run([TMUX, "-L", self.name, *args], check=True, capture_output=True, text=True).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", self.name)

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-t", self.name, "-l", text)

    def press(self, key: str) -> None:
        self._tmux("send-keys", "-t", self.name, key)

    def type_and_press(self, text: str, key: str) -> None:
        """The text and then the key in one write to the terminal, as a script or a paste-and-go sends them."""
        self._tmux("send-keys", "-t", self.name, text, key)

    def wait_for(self, condition, what: str):
        """Poll `condition()` until it is truthy; fail with the screen after DEADLINE_S."""
        deadline = time.monotonic() + DEADLINE_S
        while not (result := condition()):
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {DEADLINE_S}s; the screen:\n{self.screen()}")
            time.sleep(0.25)
        return result

    def quit(self, rc_file: Path) -> None:
        """ctrl+q, then the app's exit status (written to `rc_file` by the pane's shell) must be 0: a clean exit,
        and no MLX abort at exit."""
        self.press("C-q")
        self.wait_for(rc_file.exists, "exit")
        assert rc_file.read_text().strip() == "0"

    def close(self) -> None:
        subprocess.run([TMUX, "-L", self.name, "kill-server"], capture_output=True)


def wait_briefly(condition, seconds: float = 3.0) -> bool:
    """Whether `condition()` holds within `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def records() -> list:
    """Every stored draft, newest first."""
    if not db_path().exists():
        return []
    with Store(db_path()) as store:
        return store.history(limit=-1)


def newest_record():
    stored = records()
    return stored[0] if stored else None


def start_app(rc_file: Path, extra_env: dict[str, str] | None = None, size: tuple[int, int] = (120, 40)) -> Terminal:
    """The app running in tmux with this test's XDG dirs; its exit status lands in `rc_file`."""
    env = {key: os.environ[key] for key in ("XDG_CONFIG_HOME", "XDG_DATA_HOME")} | (extra_env or {})
    exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
    # tmux exports COLUMNS / LINES of the pane as first created (80x24 here, before -x / -y apply), and Python's
    # terminal size prefers them to the real one: unset, the app asks the terminal.
    command = (
        f"cd {shlex.quote(str(REPO))} && env -u COLUMNS -u LINES {exports} {shlex.quote(sys.executable)} -m bobby_tui; "
        f"echo $? > {shlex.quote(str(rc_file))}"
    )
    return Terminal(command, size)


@pytest.fixture
def app_terminal(tmp_path):
    terminal = start_app(tmp_path / "rc")
    yield terminal, tmp_path / "rc"
    terminal.close()


def test_the_app_generates_in_a_real_terminal_and_quits_cleanly(app_terminal):
    terminal, rc_file = app_terminal
    terminal.wait_for(lambda: "ready · " in terminal.screen(), "'ready' in the status bar")
    terminal.type(PROMPT)
    terminal.wait_for(lambda: PROMPT in terminal.screen(), "typed prompt on the screen")
    terminal.press("F5")

    record = terminal.wait_for(newest_record, "stored draft")
    assert record.prompt == PROMPT
    # The draft's first words: a card's border sits between its wrapped lines, so match within one line only.
    opening = " ".join(record.text.strip().splitlines()[0].split()[:3]) if record.text.strip() else ""
    assert opening, "the model produced an empty draft"
    terminal.wait_for(lambda: opening in " ".join(terminal.screen().split()), f"draft text {opening!r} on the screen")

    terminal.quit(rc_file)


def test_a_key_right_after_typed_text_acts_on_all_of_the_text(app_terminal):
    """The composer's keys are priority bindings: run as they arrive, they must still see every character typed
    before them, however fast the terminal delivers both."""
    terminal, rc_file = app_terminal
    terminal.wait_for(lambda: "ready · " in terminal.screen(), "'ready' in the status bar")
    terminal.type_and_press(PROMPT, "F5")
    record = terminal.wait_for(newest_record, "stored draft")
    assert record.prompt == PROMPT
    terminal.quit(rc_file)


def test_an_editor_that_cannot_start_gives_the_terminal_back_to_the_app(tmp_path):
    # exists and is executable, so it passes the checks made before suspending; exec then fails inside suspend()
    editor = tmp_path / "editor"
    editor.write_text("#!/no/such/interpreter\n")
    editor.chmod(0o755)
    rc_file = tmp_path / "rc"
    terminal = start_app(rc_file, {"EDITOR": str(editor), "VISUAL": ""}, size=(80, 24))
    try:
        terminal.wait_for(lambda: "ready · " in terminal.screen(), "'ready' in the status bar")
        terminal.type("my prompt")
        terminal.press("C-o")
        terminal.wait_for(lambda: "cannot run 'editor'" in terminal.screen(), "the editor's error on the screen")
        terminal.type(" survives")
        terminal.wait_for(lambda: "my prompt survives" in terminal.screen(), "typing after the failed editor")
        terminal.quit(rc_file)
    finally:
        terminal.close()


def test_refine_continue_persona_and_delete_with_undo_in_a_real_terminal(tmp_path):
    config = Path(os.environ["XDG_CONFIG_HOME"]) / "bobby-tui" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(
        "[sampling]\nmax_tokens = 24\n[postprocess]\nmin_length = 0\n"
        '[personas.terse]\nsystem_prompt = "You are terse."\npost_limit = 120\n'
    )
    editor = tmp_path / "editor"  # "edits" the draft: the model is to continue from this text
    editor.write_text("#!/bin/sh\nprintf 'The sea is' > \"$1\"\n")
    editor.chmod(0o755)
    rc_file = tmp_path / "rc"
    terminal = start_app(rc_file, {"EDITOR": str(editor), "VISUAL": ""})
    try:
        terminal.wait_for(lambda: "ready · " in terminal.screen(), "'ready' in the status bar")
        terminal.press("C-l")
        terminal.wait_for(lambda: "persona terse" in terminal.screen(), "the persona in the status bar")
        terminal.type(PROMPT)
        # keys for the editor are handled after the app's own: wait until the text is in before pressing one
        terminal.wait_for(lambda: PROMPT in terminal.screen(), "typed prompt on the screen")
        terminal.press("F5")
        first = terminal.wait_for(lambda: len(records()) == 1 and records()[0], "the first draft")
        assert (first.persona, first.system_prompt) == ("terse", "You are terse.")

        terminal.press("C-u")  # the editor's line, deleted
        terminal.wait_for(lambda: PROMPT not in terminal.screen(), "an empty editor")
        terminal.type("make it shorter")
        terminal.wait_for(lambda: "│ make it shorter" in terminal.screen(), "the instruction in the editor")
        terminal.press("C-n")
        refined = terminal.wait_for(lambda: len(records()) == 2 and records()[0], "the refined draft")
        assert refined.parent_id == first.id and refined.prompt == "make it shorter"
        assert [m["role"] for m in refined.messages][-3:] == ["user", "assistant", "user"]
        assert refined.messages[-2]["content"] == first.text
        terminal.wait_for(lambda: "make it shorter →" in terminal.screen(), "the conversation on the card")

        terminal.press("C-s")  # the editor runs, the app comes back, the model continues "The sea is"
        continued = terminal.wait_for(lambda: len(records()) == 3 and records()[0], "the continued draft")
        assert continued.prefill == "The sea is" and continued.text.startswith("The sea is")
        terminal.wait_for(lambda: "continues your edit" in terminal.screen(), "the continued card")

        terminal.press("F2")
        terminal.wait_for(lambda: "[terse] ↳ The sea is" in terminal.screen(), "the history rows")
        terminal.press("Enter")  # from the search box to the list, on the newest row
        # the focus moves once the app has handled the search box's enter: until then delete is the box's own key
        for _ in range(10):
            terminal.press("DC")
            if wait_briefly(lambda: len(records()) == 2):
                break
        terminal.wait_for(lambda: len(records()) == 2, "the row deleted")
        assert continued.id not in {r.id for r in records()}
        terminal.wait_for(lambda: "Deleted 1 row" in " ".join(terminal.screen().split()), "the undo hint")
        terminal.press("C-z")
        terminal.wait_for(lambda: len(records()) == 3, "the row restored")
        assert records()[0].text == continued.text
        terminal.quit(rc_file)
    finally:
        terminal.close()


def test_an_adapter_and_a_model_are_switched_from_the_palette_without_a_restart(tmp_path):
    from bobby_tui.demo import DEMO_ADAPTER_DIR, DEMO_MODEL_DIR

    adapters, models = tmp_path / "adapters", tmp_path / "models"
    adapters.mkdir()
    models.mkdir()
    (adapters / "zippy").symlink_to(DEMO_ADAPTER_DIR)
    (models / "fortunes").symlink_to(DEMO_MODEL_DIR)
    config = Path(os.environ["XDG_CONFIG_HOME"]) / "bobby-tui" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'adapters_dir = "{adapters}"\nmodels_dir = "{models}"\n'
                      "[sampling]\nmax_tokens = 16\n[postprocess]\nmin_length = 0\n")
    rc_file = tmp_path / "rc"
    terminal = start_app(rc_file)
    try:
        terminal.wait_for(lambda: "ready · " in terminal.screen(), "'ready' in the status bar")
        terminal.press("C-p")
        terminal.type("Adapter: zippy")
        terminal.wait_for(lambda: "serve with" in terminal.screen(), "the adapter in the palette")
        terminal.press("Enter")
        terminal.wait_for(lambda: "adapter zippy (on)" in terminal.screen(), "the adapter in the status bar")
        terminal.press("F5")
        terminal.wait_for(lambda: len(records()) == 1, "a draft with the adapter")
        assert records()[0].adapter == "zippy"
        terminal.press("C-g")  # compare: the base model, the demo's adapter and zippy (the same weights), one seed
        terminal.wait_for(lambda: len(records()) == 4, "the compared drafts")
        compared = {r.adapter: r for r in records()[:3]}
        assert set(compared) == {None, "adapter", "zippy"} and len({r.seed for r in compared.values()}) == 1
        assert compared["zippy"].text == compared["adapter"].text
        terminal.wait_for(lambda: "#1 · base · temp" in terminal.screen(), "the adapter named on each card")

        terminal.press("C-p")
        terminal.type("Model: fortunes")
        terminal.wait_for(lambda: "current model is released" in terminal.screen(), "the model in the palette")
        terminal.press("Enter")
        # the status line itself: while the palette still shows "Model: fortunes", the old status reads "ready",
        # and an F5 then would go to the palette
        loaded = lambda line: line.startswith("ready · ") and line.endswith("adapter none · fortunes")  # noqa: E731
        terminal.wait_for(lambda: any(map(loaded, map(str.strip, terminal.screen().splitlines()))),
                          "the new model, loaded")
        terminal.press("F5")
        terminal.wait_for(lambda: len(records()) == 5, "a draft of the new model")
        assert (records()[0].model, records()[0].adapter) == ("fortunes", None)
        terminal.quit(rc_file)
    finally:
        terminal.close()
