"""Editing the prompt in the user's $VISUAL / $EDITOR while the app is suspended."""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from pathlib import Path

from textual.app import App, SuspendNotSupported


class EditorError(Exception):
    """The external editor could not be used; the message is one line."""


def editor_command() -> list[str]:
    return shlex.split(os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi")


def edit_in_editor(app: App, text: str) -> str:
    """`text` as the user left it in their editor; EditorError if that did not work out."""
    command = editor_command()
    with tempfile.TemporaryDirectory(prefix="bobby-tui-") as tmp:
        path = Path(tmp) / "prompt.txt"
        path.write_text(text, encoding="utf-8")
        try:
            with app.suspend():
                result = subprocess.run([*command, str(path)], check=False)
        except SuspendNotSupported:
            raise EditorError("cannot hand the terminal over to $EDITOR here (it works without --inline)") from None
        except OSError as err:
            raise EditorError(f"cannot run {command[0]!r} ($EDITOR): {err.strerror or err}") from None
        if result.returncode != 0:
            raise EditorError(f"{command[0]} exited with status {result.returncode}; the prompt is unchanged")
        # Editors add a final newline; the prompt never ends in one.
        return path.read_text(encoding="utf-8").rstrip("\n")
