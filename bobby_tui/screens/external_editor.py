"""Editing the prompt (or a draft) in the user's $VISUAL / $EDITOR while the app is suspended.

Textual's `App.suspend()` resumes the terminal only when its block ends normally: an exception inside it leaves a
blank screen that no key brings back. So the command is checked before suspending, and everything inside the
block is caught there and raised again only once the app has resumed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from textual.app import App, SuspendNotSupported


class EditorError(Exception):
    """The external editor could not be used; the message is one line."""


def editor_command(what: str = "prompt") -> tuple[list[str], str]:
    """The editor's command line from $VISUAL or $EDITOR (vi when neither is set), resolved to a program that
    exists and can be run, and the variable it came from; EditorError naming the variable otherwise."""
    variable = "VISUAL" if os.environ.get("VISUAL") else "EDITOR"
    value = os.environ.get(variable) or "vi"
    try:
        command = shlex.split(value)
    except ValueError as err:  # an unbalanced quote
        raise EditorError(f"${variable} is {value!r}, which is not a command line ({err})") from None
    if not command:
        raise EditorError(f"${variable} is {value!r}: no command in it")
    program = shutil.which(command[0])
    if program is None:
        where = "no such file" if os.sep in command[0] else "not found on PATH"
        if os.sep in command[0] and os.path.exists(command[0]):
            where = "not an executable file"
        raise EditorError(f"cannot run {command[0]!r} (${variable}): {where}; the {what} is unchanged")
    return [program, *command[1:]], f"${variable}"


def edit_in_editor(app: App, text: str, what: str = "prompt") -> str:
    """`text` (the `what`: "prompt", "draft") as the user left it in their editor; EditorError if that did not
    work out."""
    command, variable = editor_command(what)
    with tempfile.TemporaryDirectory(prefix="bobby-tui-") as tmp:
        path = Path(tmp) / f"{what}.txt"
        path.write_text(text, encoding="utf-8")
        failure: BaseException | None = None
        returncode = 0
        try:
            with app.suspend():
                try:
                    returncode = subprocess.run([*command, str(path)], check=False).returncode
                except BaseException as err:  # raised below, once the app has its terminal back
                    failure = err
        except SuspendNotSupported:
            raise EditorError(f"cannot hand the terminal over to {variable} here (it works without --inline)") from None
        name = Path(command[0]).name
        if isinstance(failure, OSError):
            reason = failure.strerror or failure
            raise EditorError(f"cannot run {name!r} ({variable}): {reason}; the {what} is unchanged")
        if isinstance(failure, Exception):
            raise EditorError(f"{name} ({variable}) failed: {failure}; the {what} is unchanged")
        if failure is not None:  # KeyboardInterrupt and the like: the app is back, let them through
            raise failure
        if returncode != 0:
            raise EditorError(f"{name} exited with status {returncode}; the {what} is unchanged")
        try:
            # Editors add a final newline; the text never ends in one.
            return path.read_text(encoding="utf-8").rstrip("\n")
        except (OSError, UnicodeDecodeError) as err:
            raise EditorError(f"cannot read what {name} saved: {getattr(err, 'strerror', None) or err}") from None
