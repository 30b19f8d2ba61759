"""Copying to the system clipboard with the desktop's own tool, beside the terminal's OSC 52.

OSC 52 asks the terminal to set the clipboard and never hears back (many terminals, and tmux by default, drop it);
a clipboard tool either takes the text or fails visibly. Blocking: call it off the UI thread.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

TOOL_TIMEOUT_S = 5.0

# (program, its arguments to read the clipboard's new text from stdin), tried in this order
_TOOLS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("wl-copy", ()),
    ("xclip", ("-selection", "clipboard")),
    ("xsel", ("--clipboard", "--input")),
    ("pbcopy", ()),
)
TOOL_NAMES = tuple(name for name, _ in _TOOLS)


def _session_has_display(name: str) -> bool:
    """Whether this session has the display server the tool talks to (an ssh session into a desktop may not)."""
    if name == "wl-copy":
        return bool(os.environ.get("WAYLAND_DISPLAY"))
    if name == "pbcopy":
        return sys.platform == "darwin"
    return bool(os.environ.get("DISPLAY"))


def _usable_tools() -> list[tuple[str, list[str]]]:
    found = []
    for name, args in _TOOLS:
        path = shutil.which(name)
        if path and _session_has_display(name):
            found.append((name, [path, *args]))
    return found


def copy_with_system_tool(text: str) -> tuple[str | None, str | None]:
    """(the tool that took `text`, None), or (None, why none did), within TOOL_TIMEOUT_S."""
    tools = _usable_tools()
    if not tools:
        return None, f"no clipboard tool for this session ({', '.join(TOOL_NAMES)})"
    problems = []
    for name, command in tools:
        try:
            # xclip and xsel stay in the background to serve the selection: no pipes of ours may stay open in
            # them, or waiting for the program would wait for that background copy too
            result = subprocess.run(command, input=text.encode("utf-8"), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, timeout=TOOL_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            problems.append(f"{name} did not finish in {TOOL_TIMEOUT_S:g} s")
            continue
        except OSError as err:
            problems.append(f"{name}: {err.strerror or err}")
            continue
        if result.returncode == 0:
            return name, None
        problems.append(f"{name} exited with status {result.returncode}")
    return None, "; ".join(problems)
