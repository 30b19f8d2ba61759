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
from bobby_tui.engines import LOCAL, EngineChoice
from bobby_tui.keymap import plan_keys
from bobby_tui.screens.bindings import ACTION_NAMES, COMPOSER_BINDINGS, RESERVED_KEYS
from bobby_tui.screens.composer import ComposerScreen
from bobby_tui.service import EngineLoader, load_engine
from themes import DEFAULT_THEME, STYLESHEET, THEME_NAMES, THEMES

_FUNCTION_KEY = re.compile(r"f\d{1,2}")


class BobbyApp(App):
    CSS_PATH = STYLESHEET
    TITLE = "bobby-tui"
    # Classes on the screen by terminal size: the stylesheet gives small terminals a layout that keeps every action
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (30, "-tall")]
    BINDINGS = [
        # not remappable, and at the app so they outlive any [keys] remap of the composer's actions
        Binding("question_mark", "screen.show_keys", "Keys", show=False),
        Binding("escape", "hide_keys", "Close keys", show=False),
    ]

    def __init__(
        self,
        config: Config,
        model_dir: Path,
        adapter_dir: Path | None,
        use_adapter: bool = True,
        config_warning: str | None = None,
        loader: EngineLoader = load_engine,
        location: str = LOCAL,
    ) -> None:
        super().__init__()
        self.config = config
        self._screen_args = (config, model_dir, adapter_dir, use_adapter, loader, location)
        self._warnings = [w for w in (config_warning, *self._apply_config(config)) if w]

    def _apply_config(self, config: Config) -> Iterable[str]:
        """Themes and keys from the config; each unusable setting becomes a warning and keeps its default."""
        for theme in THEMES:
            self.register_theme(theme)
        if config.theme in self.available_themes:
            self.theme = config.theme
        else:
            self.theme = DEFAULT_THEME
            yield (f"unknown theme {config.theme!r} in the config; using {DEFAULT_THEME} "
                   f"(themes: {', '.join(THEME_NAMES)})")
        unknown = sorted(set(config.keys) - ACTION_NAMES)
        if unknown:
            yield f"unknown action(s) in [keys]: {', '.join(unknown)} (actions: {', '.join(sorted(ACTION_NAMES))})"
        plan = plan_keys(
            config.keys,
            defaults={b.action: [k.strip() for k in b.key.split(",")] for b in COMPOSER_BINDINGS},
            names={b.action: b.description for b in COMPOSER_BINDINGS},
            reserved=RESERVED_KEYS,
        )
        yield from plan.warnings
        self._action_keys = plan.keys
        self.set_keymap(plan.keymap)

    def get_default_screen(self) -> Screen:
        return ComposerScreen(*self._screen_args)

    def on_mount(self) -> None:
        for warning in self._warnings:  # they quote the user's file: never markup
            self.notify(warning, title="Config", severity="warning", timeout=20, markup=False)
        self.theme_changed_signal.subscribe(self, self._remember_theme)

    def _remember_theme(self, theme: Theme) -> None:
        if theme.name == self.config.theme:
            return
        self.config.theme = theme.name
        try:
            save_setting("theme", theme.name)
        except (ConfigError, OSError) as err:
            self.notify(f"theme not saved: {err}", severity="warning", markup=False)

    async def action_quit(self) -> None:
        """Quit; a generation in progress is cancelled first and its drafts saved, as escape would keep them."""
        if isinstance(self.screen, ComposerScreen):
            await self.screen.settle()
        self.exit()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "hide_keys":  # escape closes the keys panel; otherwise it is the composer's cancel
            return bool(self.screen.query("HelpPanel"))
        return True

    def action_hide_keys(self) -> None:
        self.action_hide_help_panel()
        self.screen.refresh_bindings()

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
                f"key: {self.keys_of(binding.action)}",
                lambda action=binding.action: screen.run_action(action),
            )
        yield from screen.palette_commands()

    def get_key_display(self, binding: Binding) -> str:
        display = super().get_key_display(binding)
        return display.upper() if _FUNCTION_KEY.fullmatch(display) else display

    def keys_of(self, action: str) -> str:
        """The keys of a composer action as shown to the user ("F5 / ^⏎"), remaps included."""
        binding = next(b for b in COMPOSER_BINDINGS if b.action == action)
        return " / ".join(self.get_key_display(binding.with_key(key)) for key in self._action_keys[action])


def run_app(model: Path | None, adapter: Path | None, no_adapter: bool, inline: bool,
            engine: EngineChoice | None = None) -> int:
    """Open the composer (the `bobby-tui` command) on `engine` (default: in this process); returns the exit status."""
    engine = engine or EngineChoice()
    config, warning = load_config()
    # Load the configured adapter even when use_adapter is off, so it can be switched on in the app.
    model_dir, adapter_dir, _ = resolve_model(dataclasses.replace(config, use_adapter=True), model, adapter, no_adapter)
    use_adapter = config.use_adapter or adapter is not None
    if engine.server is not None:  # the server's adapter is on unless the user says otherwise
        use_adapter = not no_adapter
    app = BobbyApp(config, model_dir, adapter_dir, use_adapter, config_warning=warning, loader=engine.loader(),
                   location=engine.location)
    app.run(inline=inline)
    return app.return_code or 0
