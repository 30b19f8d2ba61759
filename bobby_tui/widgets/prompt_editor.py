"""The prompt editor: Textual's TextArea, minus its F6 / F7 selection keys, which the composer uses."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import TextArea

_COMPOSER_KEYS = {"f6", "f7"}


class PromptEditor(TextArea, inherit_bindings=False):
    BINDINGS = [
        binding
        for binding in Binding.make_bindings(TextArea.BINDINGS)
        if binding.key not in _COMPOSER_KEYS
    ]
