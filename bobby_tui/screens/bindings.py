"""The composer's key bindings. Each binding's id is its action name: the key of `[keys]` in config.toml."""

from __future__ import annotations

from textual.binding import Binding


def _bind(keys: str, action: str, description: str, help: str, priority: bool = True, **options) -> Binding:
    # Priority bindings win over the prompt editor's own (it binds F6 and F7 to selections). Printable keys
    # like "[" still type into the editor, which consumes them first: they act only when it does not have focus.
    return Binding(keys, action, description, tooltip=help, id=action, priority=priority, **options)


# ctrl+enter reaches the app only in terminals that report it (kitty keyboard protocol); F5 works everywhere.
# The footer has room for the main actions; show=False ones are in the command palette (ctrl+p) and the README.
COMPOSER_BINDINGS: list[Binding] = [
    # first in the footer: however narrow the terminal, the way to every other key stays on screen
    _bind("f1", "show_keys", "Keys", "Keys: show or hide every key (escape closes the panel)"),
    _bind("f5,ctrl+enter", "generate", "Generate",
          "Generate a draft of the prompt (an empty one uses the default prompt)", key_display="F5/^⏎"),
    _bind("f6", "spread", "Spread", "Spread: several drafts at a spread of temperatures, in one batch"),
    _bind("ctrl+g", "compare_adapters", "Compare adapters",
          "Compare adapters: the prompt on the base model and each adapter, one seed, side by side in one batch",
          show=False),
    _bind("ctrl+r", "regenerate", "Rerun",
          "Rerun the last prompt with the same seeds (to compare a temperature or adapter change)"),
    _bind("ctrl+n", "refine", "Refine",
          "Refine the picked draft: the editor's text is the next instruction of its conversation (one draft)"),
    _bind("ctrl+f", "refine_spread", "Refine spread",
          "Refine the picked draft as a spread: the editor's instruction at the spread's temperatures", show=False),
    _bind("ctrl+s", "continue_draft", "Continue",
          "Continue the picked draft: edit its text in $EDITOR, then the model goes on from there", show=False),
    _bind("escape", "cancel", "Cancel", "Cancel the generation; what was generated is kept", priority=False),
    _bind("f7,left_square_bracket", "temperature_down", "Temp −", "Temperature down by 0.05", show=False),
    # one footer entry for the pair
    _bind("f8,right_square_bracket", "temperature_up", "Temp −/+", "Temperature up by 0.05", key_display="F7/F8"),
    _bind("f9,left_curly_bracket", "top_p_down", "top_p −", "top_p down by 0.05", show=False),
    _bind("f10,right_curly_bracket", "top_p_up", "top_p +", "top_p up by 0.05", show=False),
    _bind("ctrl+up", "previous_draft", "Previous draft", "Pick the previous draft", show=False),
    _bind("ctrl+down", "next_draft", "Next draft", "Pick the next draft", show=False),
    _bind("f3", "favorite", "Fav", "Favorite / unfavorite the picked draft"),
    _bind("f4", "copy_draft", "Copy", "Copy the picked draft to the clipboard"),
    _bind("ctrl+l", "next_persona", "Persona", "Persona: switch to the config's next one (ctrl+p Persona lists all)",
          show=False),
    _bind("ctrl+t", "toggle_adapter", "Adapter", "Adapter: switch the fine-tune on or off"),
    _bind("f2", "toggle_history", "History", "History: show or hide past generations"),
    # only in the history list (the editor and the search box keep their own delete and ctrl+z)
    _bind("delete", "delete_history", "Delete", "Delete the highlighted history row (undo brings it back)",
          priority=False, show=False),
    _bind("ctrl+z", "undo_delete", "Undo delete", "Undo the last delete or prune of history rows", priority=False,
          show=False),
    _bind("ctrl+o", "edit_prompt", "Edit", "Edit the prompt in $EDITOR"),
    _bind("f12", "switch_theme", "Theme", "Theme: switch to the next one (ctrl+p Theme lists every theme)", show=False),
]

ACTION_NAMES: frozenset[str] = frozenset(binding.action for binding in COMPOSER_BINDINGS)

# The app's own keys, which no [keys] remap may take: quit, the command palette, copy / "how do I quit".
RESERVED_KEYS: dict[str, str] = {"ctrl+q": "Quit", "ctrl+p": "the command palette", "ctrl+c": "Copy"}
