"""The Textual composer app: themes, remapped keys, command palette entries, and the `bobby-tui` entry point."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.theme import Theme

from bobby_tui.config import Config, ConfigError, load_config, resolve_model, save_setting
from bobby_tui.screens.bindings import ACTION_NAMES, COMPOSER_BINDINGS
from bobby_tui.screens.composer import ComposerScreen
from bobby_tui.service import EngineLoader, load_engine
from themes import DEFAULT_THEME, STYLESHEET, THEME_NAMES, THEMES

_FUNCTION_KEY = re.compile(r"f\d{1,2}")


class BobbyApp(App):
    CSS_PATH = STYLESHEET
    TITLE = "bobby-tui"

    def __init__(
        self,
        config: Config,
        model_dir: Path,
        adapter_dir: Path | None,
        use_adapter: bool = True,
        config_warning: str | None = None,
        loader: EngineLoader = load_engine,
    ) -> None:
        super().__init__()
        self.config = config
        self._screen_args = (config, model_dir, adapter_dir, use_adapter, loader)
        self._warnings = [w for w in (config_warning, *self._apply_config(config)) if w]

    def _apply_config(self, config: Config) -> Iterable[str]:
        """Themes and keys from the config; each unusable setting becomes a warning and keeps its default."""
        for theme in THEMES:
            self.register_theme(theme)
        if config.theme in self.available_themes:
            self.theme = config.theme
        else:
            self.theme = DEFAULT_THEME
            yield f"unknown theme {config.theme!r} in the config; using {DEFAULT_THEME} (themes: {', '.join(THEME_NAMES)})"
        unknown = sorted(set(config.keys) - ACTION_NAMES)
        if unknown:
            yield f"unknown action(s) in [keys]: {', '.join(unknown)} (actions: {', '.join(sorted(ACTION_NAMES))})"
        self.set_keymap({action: key for action, key in config.keys.items() if action in ACTION_NAMES})

    def get_default_screen(self) -> Screen:
        return ComposerScreen(*self._screen_args)

    def on_mount(self) -> None:
        for warning in self._warnings:
            self.notify(warning, title="Config", severity="warning", timeout=20)
        self.theme_changed_signal.subscribe(self, self._remember_theme)

    def _remember_theme(self, theme: Theme) -> None:
        if theme.name == self.config.theme:
            return
        self.config.theme = theme.name
        try:
            save_setting("theme", theme.name)
        except (ConfigError, OSError) as err:
            self.notify(f"theme not saved: {err}", severity="warning")

    def action_switch_theme(self) -> None:
        """Cycle through the shipped themes (the command palette's "Theme" offers every theme)."""
        index = THEME_NAMES.index(self.theme) if self.theme in THEME_NAMES else -1
        self.theme = THEME_NAMES[(index + 1) % len(THEME_NAMES)]

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if not isinstance(screen, ComposerScreen):
            return
        for binding in COMPOSER_BINDINGS:
            # the binding's help as the title (the footer's short description can stand for a pair of keys)
            yield SystemCommand(
                binding.tooltip,
                f"key: {self._keys_of(binding)}",
                lambda action=binding.action: screen.run_action(action),
            )

    def get_key_display(self, binding: Binding) -> str:
        display = super().get_key_display(binding)
        return display.upper() if _FUNCTION_KEY.fullmatch(display) else display

    def _keys_of(self, binding: Binding) -> str:
        keys = self._keymap.get(binding.id, binding.key).split(",")
        return " / ".join(self.get_key_display(binding.with_key(key.strip())) for key in keys)


def run_app(model: Path | None, adapter: Path | None, no_adapter: bool, inline: bool) -> int:
    """Open the composer (the `bobby-tui` command); returns the exit status."""
    config, warning = load_config()
    # Load the configured adapter even when use_adapter is off, so it can be switched on in the app.
    model_dir, adapter_dir, _ = resolve_model(dataclasses.replace(config, use_adapter=True), model, adapter, no_adapter)
    use_adapter = config.use_adapter or adapter is not None
    app = BobbyApp(config, model_dir, adapter_dir, use_adapter, config_warning=warning)
    app.run(inline=inline)
    return app.return_code or 0
