"""The composer screen: prompt editor, drafts, history, status bar; turns key presses into engine jobs."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from inference import SamplingParams  # a plain dataclass: building requests here never touches MLX
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from bobby_tui.config import Config
from bobby_tui.demo import DEMO_ADAPTER_DIR, DEMO_MODEL_DIR
from bobby_tui.paths import db_path
from bobby_tui.screens.bindings import COMPOSER_BINDINGS
from bobby_tui.screens.external_editor import EditorError, edit_in_editor
from bobby_tui.service import (
    AdapterChanged,
    ComposeJob,
    DraftDelta,
    DraftFinished,
    DraftRestarted,
    EngineLoader,
    EngineService,
    GenerationFinished,
    Loaded,
    LoadFailed,
    LoadProgressed,
)
from bobby_tui.storage import GenerationRecord, Store, StoreError
from bobby_tui.widgets.draft_card import DraftCard
from bobby_tui.widgets.drafts_pane import DraftsPane
from bobby_tui.widgets.history_pane import HistoryPane
from bobby_tui.widgets.prompt_editor import PromptEditor
from bobby_tui.widgets.status_bar import Status, StatusBar

STEP = 0.05  # temperature and top_p change by this much per key press
MAX_TEMPERATURE = 2.0
SEED_RANGE = 2**31
HISTORY_LIMIT = 200
_GENERATING_ACTIONS = {"generate", "spread", "regenerate"}


def _shown_name(directory: Path | None, name: str | None) -> str | None:
    """A model's or adapter's name on screen: the engine's (its directory's), but "demo" for the shipped demo,
    whose directories are plainly called model/ and adapter/."""
    if directory is not None and directory in (DEMO_MODEL_DIR, DEMO_ADAPTER_DIR):
        return f"demo {name}"
    return name


@dataclass(frozen=True)
class _Run:
    """What regenerate repeats: the prompt, the seeds, and whether it was a spread."""

    prompt: str
    seeds: tuple[int, ...]
    spread: bool


class ComposerScreen(Screen):
    BINDINGS = COMPOSER_BINDINGS
    AUTO_FOCUS = "#prompt"  # focused as the screen appears, so no early key press is lost

    def __init__(
        self, config: Config, model_dir: Path, adapter_dir: Path | None, use_adapter: bool, loader: EngineLoader
    ) -> None:
        super().__init__()
        self.config = config
        sampling = config.sampling
        self._dirs = (model_dir, adapter_dir)
        self.status = Status(
            model=_shown_name(model_dir, model_dir.name),
            adapter=_shown_name(adapter_dir, adapter_dir.name if adapter_dir else None),
            adapter_enabled=use_adapter and adapter_dir is not None,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
        )
        self.service = EngineService(
            self, model_dir, adapter_dir, use_adapter, loader, warmup_batches=(1, len(sampling.spread))
        )
        self.store: Store | None = None
        self.job: ComposeJob | None = None  # the generation in progress
        self.load_error: str | None = None
        self._last_run: _Run | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="compose-column"):
                yield PromptEditor(
                    id="prompt",
                    soft_wrap=True,
                    placeholder=f"{self.config.default_prompt}   (empty prompt: this default)",
                )
                yield DraftsPane(hint="Type a prompt, then F5 for a draft or F6 for a spread.", id="drafts")
            yield HistoryPane(id="history")
        yield StatusBar(id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._show_status()
        try:
            self.store = Store(db_path())
        except StoreError as err:
            self.notify(f"{err}; history is off for this session", severity="error", timeout=20)
        self.service.start()

    def on_unmount(self) -> None:
        self.service.stop()
        if self.store is not None:
            self.store.close()

    # --- helpers ---

    @property
    def drafts(self) -> DraftsPane:
        return self.query_one("#drafts", DraftsPane)

    @property
    def editor(self) -> PromptEditor:
        return self.query_one("#prompt", PromptEditor)

    def _show_status(self) -> None:
        self.query_one("#status", StatusBar).show(self.status)

    def _set_state(self, state: str) -> None:
        self.status.state = state
        self._show_status()
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Generating actions are dimmed while a generation runs, cancel while none does."""
        if action in _GENERATING_ACTIONS and self.job is not None:
            return None
        if action == "cancel" and self.job is None:
            return None
        return True

    def _sampling(self, temperature: float, seed: int) -> SamplingParams:
        sampling = self.config.sampling
        return SamplingParams(
            temperature=temperature,
            top_p=self.status.top_p,
            top_k=sampling.top_k,
            min_p=sampling.min_p,
            repetition_penalty=sampling.repetition_penalty,
            seed=seed,
        )

    async def _start(self, run: _Run) -> None:
        if self.load_error is not None:
            self.notify(f"No model is loaded: {self.load_error}", severity="error")
            return
        if self.job is not None:
            self.notify("A generation is running: wait for it or cancel it (escape).")
            return
        temperatures = list(self.config.sampling.spread) if run.spread else [self.status.temperature]
        drafts = [self._sampling(t, seed) for t, seed in zip(temperatures, run.seeds)]
        job = ComposeJob(
            prompt=run.prompt,
            system_prompt=self.config.system_prompt,
            drafts=drafts,
            max_tokens=self.config.sampling.max_tokens,
            postprocess=self.config.postprocess,
            post_limit=self.config.post_limit,
        )
        self.job, self._last_run = job, run
        limit = self.config.post_limit
        await self.drafts.show_cards([DraftCard(i + 1, p.temperature, p.seed, limit) for i, p in enumerate(drafts)])
        self.service.submit(job)
        if self.status.state != "loading":
            self._set_state("generating")
        else:
            self.refresh_bindings()

    def _new_run(self, spread: bool) -> _Run:
        count = len(self.config.sampling.spread) if spread else 1
        prompt = self.editor.text.strip() or self.config.default_prompt
        return _Run(prompt, tuple(random.randrange(SEED_RANGE) for _ in range(count)), spread)

    def _card_of(self, message: DraftDelta | DraftRestarted | DraftFinished) -> DraftCard | None:
        """The card a message is about, unless it belongs to an older generation."""
        if self.job is None or message.job_id != self.job.id:
            return None
        return self.drafts.card(message.index)

    def refresh_history(self) -> None:
        history = self.query_one("#history", HistoryPane)
        if history.display and self.store is not None:
            history.show(self._history(history.query_text))

    def _history(self, search: str) -> list[GenerationRecord]:
        try:
            return self.store.history(limit=HISTORY_LIMIT, search=search or None)
        except StoreError as err:
            self.notify(str(err), severity="error")
            return []

    # --- actions ---

    async def action_generate(self) -> None:
        await self._start(self._new_run(spread=False))

    async def action_spread(self) -> None:
        await self._start(self._new_run(spread=True))

    async def action_regenerate(self) -> None:
        if self._last_run is None:
            self.notify("Nothing to regenerate yet: generate first (F5).")
            return
        await self._start(self._last_run)

    def action_cancel(self) -> None:
        if self.job is not None:
            self.service.cancel(self.job)

    def _change_sampling(self, temperature_steps: int = 0, top_p_steps: int = 0) -> None:
        status = self.status
        status.temperature = min(max(round(status.temperature + temperature_steps * STEP, 2), 0.0), MAX_TEMPERATURE)
        status.top_p = min(max(round(status.top_p + top_p_steps * STEP, 2), STEP), 1.0)
        self._show_status()

    def action_temperature_down(self) -> None:
        self._change_sampling(temperature_steps=-1)

    def action_temperature_up(self) -> None:
        self._change_sampling(temperature_steps=1)

    def action_top_p_down(self) -> None:
        self._change_sampling(top_p_steps=-1)

    def action_top_p_up(self) -> None:
        self._change_sampling(top_p_steps=1)

    def action_previous_draft(self) -> None:
        self.drafts.select_next(-1)

    def action_next_draft(self) -> None:
        self.drafts.select_next(1)

    def action_favorite(self) -> None:
        card = self.drafts.selected
        if card is None or card.gen_id is None or self.store is None:
            self.notify("Select a finished draft to favorite.")
            return
        try:
            self.store.set_favorite(card.gen_id, not card.favorite)
        except StoreError as err:
            self.notify(str(err), severity="error")
            return
        card.set_favorite(not card.favorite)
        self.notify("Favorited ★" if card.favorite else "Unfavorited")
        self.refresh_history()

    def action_copy_draft(self) -> None:
        card = self.drafts.selected
        if card is None or not card.text:
            self.notify("No draft to copy.")
            return
        self.app.copy_to_clipboard(card.text)
        self.notify(f"Copied draft #{card.number} ({len(card.text)} characters)")

    def action_toggle_adapter(self) -> None:
        if self.status.adapter is None:
            self.notify("No adapter is loaded (see --adapter / the config's adapter).")
            return
        self.service.set_adapter(not self.status.adapter_enabled)

    def action_toggle_history(self) -> None:
        history = self.query_one("#history", HistoryPane)
        history.display = not history.display
        if history.display:
            self.refresh_history()
            history.query_one("#history-search").focus()
        else:
            self.editor.focus()

    def action_edit_prompt(self) -> None:
        try:
            self.editor.text = edit_in_editor(self.app, self.editor.text)
        except EditorError as err:
            self.notify(str(err), severity="error")
        self.editor.focus()

    def action_switch_theme(self) -> None:
        self.app.action_switch_theme()

    # --- messages from the engine thread ---

    def on_load_progressed(self, message: LoadProgressed) -> None:
        self.query_one("#status", StatusBar).progress(message.done, message.total)

    def on_loaded(self, message: Loaded) -> None:
        model_dir, adapter_dir = self._dirs
        self.status.model = _shown_name(model_dir, message.model_name)
        self.status.adapter = _shown_name(adapter_dir, message.adapter_name)
        self.status.adapter_enabled = message.adapter_enabled
        self.query_one("#status", StatusBar).loading_done()
        self._set_state("generating" if self.job is not None else "ready")

    def on_load_failed(self, message: LoadFailed) -> None:
        self.load_error = message.error
        self.query_one("#status", StatusBar).loading_done()
        self.drafts.set_hint(f"The model did not load: {message.error}")
        self._set_state("failed")
        self.notify(message.error, title="The model did not load", severity="error", timeout=60)

    def on_adapter_changed(self, message: AdapterChanged) -> None:
        self.status.adapter_enabled = message.enabled
        self._show_status()
        self.notify(f"Adapter {'on' if message.enabled else 'off'}")

    def on_draft_delta(self, message: DraftDelta) -> None:
        if card := self._card_of(message):
            card.append(message.text)  # redrawn by the drafts pane's timer

    def on_draft_restarted(self, message: DraftRestarted) -> None:
        if card := self._card_of(message):
            card.restart(message.attempt)

    def on_draft_finished(self, message: DraftFinished) -> None:
        gen_id = self._save(message.record)
        draft = message.draft
        self.status.decode_tok_s = draft.stats.decode_tok_s
        if card := self._card_of(message):
            card.finish(draft.text, draft.seed, draft.stats.decode_tok_s, draft.finish_reason, gen_id)
        self._show_status()

    def _save(self, record: GenerationRecord) -> int | None:
        if self.store is None:
            return None
        try:
            return self.store.add(record)
        except StoreError as err:
            self.notify(str(err), severity="error")
            return None

    def on_generation_finished(self, message: GenerationFinished) -> None:
        if self.job is None or message.job_id != self.job.id:
            return
        self.job = None
        self.drafts.flush()
        if message.error:
            self.notify(message.error, title="Generation failed", severity="error", timeout=30)
        self._set_state("failed" if self.load_error else "ready")
        self.refresh_history()

    # --- history ---

    @on(HistoryPane.Searched)
    def _search_history(self, message: HistoryPane.Searched) -> None:
        self.refresh_history()

    @on(HistoryPane.Picked)
    async def _show_past(self, message: HistoryPane.Picked) -> None:
        if self.job is not None:
            self.notify("A generation is running: cancel it (escape) to look at past ones.")
            return
        record = message.record
        card = DraftCard(1, record.temperature, record.seed, self.config.post_limit)
        await self.drafts.show_cards([card])
        card.finish(record.text, record.seed, record.decode_tok_s, record.finish_reason, record.id)
        card.set_favorite(record.favorite)
        self.editor.text = record.prompt
