"""The composer screen: prompt editor, drafts, history, status bar; turns key presses into engine jobs.

Its live state (temperature, top_p, status, speed, adapter) is reactives that the status bar binds to. Nothing here
blocks the UI thread: the engine runs on its own thread (bobby_tui.service), and every history read and write runs
in a Textual thread worker that answers with a message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer
from textual.worker import get_current_worker

from bobby_tui.clipboard import copy_with_system_tool
from bobby_tui.config import MAX_SPREAD, Config, ConfigError, adapter_names
from bobby_tui.demo import DEMO_ADAPTER_DIR, DEMO_MODEL_DIR
from bobby_tui.engines import LOCAL
from bobby_tui.paths import db_path
from bobby_tui.screens.bindings import COMPOSER_BINDINGS
from bobby_tui.screens.external_editor import EditorError, edit_in_editor
from bobby_tui.service import (
    AdapterChanged,
    AdaptersReady,
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
from bobby_tui.widgets.status_bar import StatusBar
from inference.api import SAMPLING_LIMITS, SamplingParams  # no MLX: building requests here never loads it

STEP = 0.05  # temperature and top_p change by this much per key press
SEED_RANGE = 2**31
HISTORY_LIMIT = 200
STORE_WAIT_S = 30.0  # how long a history job waits for the database to open (another instance may be migrating it)
QUIT_WAIT_S = 10.0  # how long quitting waits for a cancelled generation's drafts to come back and be saved
_GENERATING_ACTIONS = {"generate", "spread", "regenerate", "refine", "refine_spread", "continue_draft",
                       "compare_adapters"}
PRUNE_DAYS = (7, 30, 90)  # the palette's "prune history" choices


def _shown_name(directory: Path | None, name: str | None) -> str | None:
    """A model's or adapter's name on screen: the engine's (its directory's), but "demo" for the shipped demo,
    whose directories are plainly called model/ and adapter/."""
    if directory is not None and directory in (DEMO_MODEL_DIR, DEMO_ADAPTER_DIR):
        return f"demo {name}"
    return name


def _clamp(name: str, value: float, smallest_open: float) -> float:
    """`value` rounded to the step's precision and held inside the engine's range for `name` (an open low end
    stops at `smallest_open`)."""
    limit = SAMPLING_LIMITS[name]
    low = smallest_open if limit.low_open else limit.low
    return min(max(round(value, 2), low), limit.high)


@dataclass(frozen=True)
class _Run:
    """What regenerate repeats: the prompt (the last user turn), the seeds, whether it was a spread or a comparison
    of adapters, and the conversation it continued."""

    prompt: str
    seeds: tuple[int, ...]
    spread: bool
    history: tuple[dict[str, str], ...] = ()  # the turns before `prompt`
    prefill: str | None = None  # the drafts start with this text
    parent_id: int | None = None  # the stored draft refined or continued
    # a comparison: per draft, the adapter it runs with (None: the base model), all at one temperature and seed
    adapters: tuple[str | None, ...] | None = None


# --- answers of the history workers (posted from their threads) ---------------------------------------------


@dataclass
class StoreOpened(Message):
    error: str | None  # None: the history is ready


@dataclass
class HistoryLoaded(Message):
    search: str
    records: list[GenerationRecord]
    error: str | None = None


@dataclass
class DraftSaved(Message):
    job_id: int
    card: DraftCard | None  # None: the draft of an older generation, no longer on screen
    gen_id: int | None
    error: str | None  # None: saved as gen_id


@dataclass
class HistoryDeleted(Message):
    records: list[GenerationRecord]  # what was deleted, for undo
    what: str  # "1 row", "12 rows older than 30 days"
    error: str | None


@dataclass
class HistoryRestored(Message):
    count: int
    error: str | None


@dataclass
class FavoriteSet(Message):
    card: DraftCard
    favorite: bool
    error: str | None


@dataclass
class Copied(Message):
    number: int
    characters: int
    tool: str | None  # the system clipboard tool that took the text too, if any
    problem: str | None  # why no tool did


class ComposerScreen(Screen):
    BINDINGS = COMPOSER_BINDINGS
    AUTO_FOCUS = "#prompt"  # focused as the screen appears, so no early key press is lost

    state: reactive[str] = reactive("loading")  # "loading" | "ready" | "generating" | "failed"
    persona: reactive[str | None] = reactive(None)
    load_phase: reactive[str] = reactive("reading")
    model_name: reactive[str] = reactive("")
    adapter_name: reactive[str | None] = reactive(None)
    adapter_enabled: reactive[bool] = reactive(False)
    temperature: reactive[float] = reactive(0.0)
    top_p: reactive[float] = reactive(1.0)
    max_tokens: reactive[int] = reactive(0)
    decode_tok_s: reactive[float | None] = reactive(None)
    location: reactive[str] = reactive(LOCAL)  # where the engine runs: "local" or the server's URL

    def __init__(
        self, config: Config, model_dir: Path, adapter_dir: Path | None, use_adapter: bool, loader: EngineLoader,
        location: str = LOCAL,
    ) -> None:
        super().__init__()
        self.set_reactive(ComposerScreen.location, location)
        self.base_config = config  # as read: each persona applies to it
        self._persona_warning: str | None = None
        try:
            self.config = config.with_persona(None)  # the configured persona, if any
        except ConfigError as err:
            self.config, self._persona_warning = config, f"{err}; starting without a persona"
        self.set_reactive(ComposerScreen.persona, self.config.persona)
        sampling = self.config.sampling
        # a server's model is named by the server (Loaded): the local directories say nothing about it
        self._dirs = (model_dir, adapter_dir) if location == LOCAL else (None, None)
        self.set_reactive(ComposerScreen.model_name, _shown_name(model_dir, model_dir.name))
        self.set_reactive(ComposerScreen.adapter_name, self._adapter_shown(adapter_dir.name if adapter_dir else None))
        self.set_reactive(ComposerScreen.adapter_enabled, use_adapter and adapter_dir is not None)
        self.set_reactive(ComposerScreen.temperature, sampling.temperature)
        self.set_reactive(ComposerScreen.top_p, sampling.top_p)
        self.set_reactive(ComposerScreen.max_tokens, sampling.max_tokens)
        self.service = EngineService(
            self, model_dir, adapter_dir, use_adapter, loader, warmup_batches=(1, len(sampling.spread))
        )
        self.store: Store | None = None  # set by the worker that opens it
        self._store_ready = threading.Event()
        self.job: ComposeJob | None = None  # the generation in progress
        self._job_done = asyncio.Event()
        self._unsaved_job: int | None = None  # the job whose failed save was already reported
        # drafts waiting to be saved: one save worker at a time, so rows are stored in the order drafts finished
        self._save_queue: deque[tuple[int, DraftCard | None, GenerationRecord]] = deque()
        self._saving = False
        self.saves_done = asyncio.Event()
        self.saves_done.set()
        self.load_error: str | None = None
        self._last_run: _Run | None = None
        self._compare_prompt: str | None = None  # a comparison waiting for the engine's adapters (AdaptersReady)
        self._deleted: list[list[GenerationRecord]] = []  # undo stack of history deletes and prunes

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="compose-column"):
                yield PromptEditor(
                    id="prompt",
                    soft_wrap=True,
                    # Content, not str: a str placeholder is parsed as markup, and the default prompt is the user's
                    placeholder=Content(f"{self.config.default_prompt}   (empty prompt: this default)"),
                )
                yield DraftsPane(hint=self._hint(), id="drafts")
            yield HistoryPane(id="history")
        yield StatusBar(id="status").data_bind(
            ComposerScreen.state, ComposerScreen.persona, ComposerScreen.load_phase, ComposerScreen.model_name,
            ComposerScreen.adapter_name,
            ComposerScreen.adapter_enabled, ComposerScreen.temperature, ComposerScreen.top_p,
            ComposerScreen.max_tokens, ComposerScreen.decode_tok_s, ComposerScreen.location,
        )
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._open_store()
        self.service.start()
        if self._persona_warning:
            self.notify(self._persona_warning, title="Persona", severity="warning", timeout=20)
        elif self.persona is not None:
            self._use_persona_adapter()

    def on_unmount(self) -> None:
        self.service.stop()
        if self.store is not None:
            self.store.close()

    def notify(self, message: str, *, title: str = "", severity="information", timeout=None, markup=False) -> None:
        # Messages here carry the user's text (paths, prompts, model names, errors): never parsed as markup.
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    # --- reactives ---

    def validate_temperature(self, value: float) -> float:
        return _clamp("temperature", value, 0.0)

    def validate_top_p(self, value: float) -> float:
        return _clamp("top_p", value, STEP)

    def watch_state(self) -> None:
        self.refresh_bindings()

    # --- helpers ---

    @property
    def drafts(self) -> DraftsPane:
        return self.query_one("#drafts", DraftsPane)

    @property
    def editor(self) -> PromptEditor:
        return self.query_one("#prompt", PromptEditor)

    @property
    def history_pane(self) -> HistoryPane:
        return self.query_one("#history", HistoryPane)

    def _adapter_shown(self, name: str | None) -> str | None:
        """The engine's adapter name as shown ("demo adapter" for the demo's, loaded with the model)."""
        adapter_dir = self._dirs[1]
        return _shown_name(adapter_dir, name) if adapter_dir is not None and adapter_dir.name == name else name

    def _adapter_label(self, name: str | None) -> str:
        """Which adapter a compared draft ran with, as the status bar names it."""
        return "base" if name is None else f"adapter {self._adapter_shown(name)}"

    def _hint(self) -> str:
        keys = self.app.keys_of
        return (f"Type a prompt, then {keys('generate')} for a draft or {keys('spread')} for a spread. "
                f"{keys('show_keys')}: every key.")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Generating actions are dimmed while a generation runs; cancel is off the footer while none does (a
        narrow footer has no room to spare), and while the keys panel is open escape is the app's (it closes it)."""
        if action in _GENERATING_ACTIONS and self.job is not None:
            return None
        if action == "cancel" and (self.job is None or self._keys_shown()):
            return False
        # dimmed (listed in the keys panel all the same) where they have nothing to act on: delete works on the row
        # under the history list's cursor only, undo once something was deleted
        if action == "delete_history" and self.focused is not self.history_pane.options:
            return None
        if action == "undo_delete" and not self._deleted:
            return None
        return True

    def _keys_shown(self) -> bool:
        return bool(self.query("HelpPanel"))

    def _spread_temperatures(self) -> list[float]:
        """The config's spread, moved by as much as the temperature keys moved the temperature."""
        shift = self.temperature - self.config.sampling.temperature
        return [self.validate_temperature(t + shift) for t in self.config.sampling.spread]

    def _sampling(self, temperature: float, seed: int) -> SamplingParams:
        sampling = self.config.sampling
        return SamplingParams(
            temperature=temperature,
            top_p=self.top_p,
            top_k=sampling.top_k,
            min_p=sampling.min_p,
            repetition_penalty=sampling.repetition_penalty,
            seed=seed,
        )

    def _can_start(self) -> bool:
        """Whether a generation may start now; if not, the notification that says why."""
        if self.load_error is not None:
            self.notify(f"No model is loaded: {self.load_error}", severity="error")
            return False
        if self.job is not None:
            self.notify("A generation is running: wait for it or cancel it (escape).")
            return False
        return True

    async def _start(self, run: _Run) -> None:
        if not self._can_start():
            return
        # a spread's drafts each at their own temperature; any other run's (a comparison's too) at the current one
        temperatures = self._spread_temperatures() if run.spread else [self.temperature] * len(run.seeds)
        drafts = [self._sampling(t, seed) for t, seed in zip(temperatures, run.seeds, strict=False)]
        job = ComposeJob(
            prompt=run.prompt,
            system_prompt=self.config.system_prompt,
            drafts=drafts,
            max_tokens=self.config.sampling.max_tokens,
            postprocess=self.config.postprocess,
            post_limit=self.config.post_limit,
            history=list(run.history),
            prefill=run.prefill,
            persona=self.persona,
            parent_id=run.parent_id,
            adapters=run.adapters,
        )
        self.job, self._last_run = job, run
        self._job_done.clear()
        messages = [*run.history, {"role": "user", "content": run.prompt}]
        labels = [self._adapter_label(name) for name in run.adapters] if run.adapters is not None else []
        await self.drafts.show_cards([
            DraftCard(i + 1, p.temperature, p.seed, self.config.post_limit, messages=messages, prefill=run.prefill,
                      adapter=labels[i] if labels else None)
            for i, p in enumerate(drafts)
        ])
        self.service.submit(job)
        if self.state != "loading":
            self.state = "generating"
        self.refresh_bindings()

    def _seeds(self, spread: bool) -> tuple[int, ...]:
        return tuple(random.randrange(SEED_RANGE) for _ in range(len(self.config.sampling.spread) if spread else 1))

    async def _typed_text(self) -> str:
        """The prompt editor's text, once it has applied the keys queued before the one that asks. The composer's
        keys are priority bindings: the app runs them as they arrive, while the characters typed just before may
        still wait in the editor's queue (text typed or pasted and a key right after, as a script or tmux sends
        them)."""
        settled = asyncio.Event()
        if self.editor.call_later(settled.set):
            await settled.wait()
        return self.editor.text.strip()

    async def _new_run(self, spread: bool) -> _Run:
        prompt = await self._typed_text() or self.config.default_prompt
        return _Run(prompt, self._seeds(spread), spread)

    def _picked_draft(self, verb: str) -> DraftCard | None:
        card = self.drafts.selected
        if card is None or card.finish_reason is None or not card.text:
            keys = self.app.keys_of
            self.notify(f"Pick a finished draft to {verb} ({keys('previous_draft')} / {keys('next_draft')}, or a "
                        f"history row).")
            return None
        return card

    async def _refine_run(self, spread: bool) -> _Run | None:
        """The picked draft's conversation, its text as the assistant's turn, the editor's text as the next
        user turn."""
        card = self._picked_draft("refine")
        if card is None:
            return None
        instruction = await self._typed_text()
        if not instruction:
            self.notify("Type an instruction for the picked draft first (e.g. \"make it shorter\").")
            return None
        history = (*card.messages, {"role": "assistant", "content": card.text})
        seeds = self._seeds(spread)
        return _Run(instruction, seeds, spread, history=history, parent_id=card.gen_id,
                    adapters=self._compared_adapter(card, len(seeds)))

    def _compared_adapter(self, card: DraftCard, drafts: int) -> tuple[str | None, ...] | None:
        """A draft of a comparison is refined with the adapter that wrote it (every draft of the refinement), not
        with whichever adapter is switched on; None for any other draft."""
        run = self._last_run
        if run is None or run.adapters is None or card not in self.drafts.cards:
            return None
        return (run.adapters[self.drafts.cards.index(card)],) * drafts

    def _card_of(self, message: DraftDelta | DraftRestarted | DraftFinished) -> DraftCard | None:
        """The card a message is about, unless it belongs to an older generation."""
        if self.job is None or message.job_id != self.job.id:
            return None
        return self.drafts.card(message.index)

    async def settle(self) -> None:
        """Before the app quits: stop the generation in progress and wait (bounded) until its drafts are saved,
        as escape would have left them."""
        if self.job is not None and self.state != "loading":  # a job queued behind the load has nothing to save yet
            self.service.cancel(self.job)
            try:
                await asyncio.wait_for(self._job_done.wait(), QUIT_WAIT_S)
            except asyncio.TimeoutError:
                return
        try:
            await asyncio.wait_for(self.saves_done.wait(), QUIT_WAIT_S)
        except asyncio.TimeoutError:
            pass

    # --- the history, off the UI thread ---

    @work(thread=True, group="store")
    def _open_store(self) -> None:
        try:
            self.store = Store(db_path())
            error = None
        except StoreError as err:
            error = str(err)
        finally:
            self._store_ready.set()
        self.post_message(StoreOpened(error))

    def _opened_store(self) -> Store | None:
        """The history database, once the worker opening it is done (None: it could not be opened)."""
        self._store_ready.wait(STORE_WAIT_S)
        return self.store

    def refresh_history(self) -> None:
        history = self.history_pane
        if history.display:
            self._load_history(history.query_text)

    @work(thread=True, exclusive=True, group="history")
    def _load_history(self, search: str) -> None:
        """Search as you type: a newer search cancels this one, whose answer is then dropped."""
        store = self._opened_store()
        if store is None:
            return
        try:
            answer = HistoryLoaded(search, store.history(limit=HISTORY_LIMIT, search=search or None))
        except StoreError as err:
            answer = HistoryLoaded(search, [], str(err))
        if not get_current_worker().is_cancelled:
            self.post_message(answer)

    def _queue_save(self, job_id: int, card: DraftCard | None, record: GenerationRecord) -> None:
        self._save_queue.append((job_id, card, record))
        self.saves_done.clear()
        if not self._saving:
            self._save_next()

    def _save_next(self) -> None:
        self._saving = bool(self._save_queue)
        if self._saving:
            self._save(*self._save_queue.popleft())
        else:
            self.saves_done.set()

    @work(thread=True, group="save")
    def _save(self, job_id: int, card: DraftCard | None, record: GenerationRecord) -> None:
        store = self._opened_store()
        if store is None:
            self.post_message(DraftSaved(job_id, card, None, "the history database is not open"))
            return
        try:
            self.post_message(DraftSaved(job_id, card, store.add(record), None))
        except StoreError as err:
            self.post_message(DraftSaved(job_id, card, None, str(err)))

    @work(thread=True, group="store")
    def _delete(self, ids: list[int]) -> None:
        store = self._opened_store()
        try:
            if store is None:
                raise StoreError("the history database is not open")
            deleted = store.delete(ids)
            self.post_message(HistoryDeleted(deleted, _rows(len(deleted)), None))
        except StoreError as err:
            self.post_message(HistoryDeleted([], "", str(err)))

    @work(thread=True, group="store")
    def _prune(self, days: int) -> None:
        store = self._opened_store()
        try:
            if store is None:
                raise StoreError("the history database is not open")
            pruned = store.prune(days)
            what = f"{_rows(len(pruned))} (unfavorited, older than {days} days)"
            self.post_message(HistoryDeleted(pruned, what, None))
        except StoreError as err:
            self.post_message(HistoryDeleted([], "", str(err)))

    @work(thread=True, group="store")
    def _restore(self, records: list[GenerationRecord]) -> None:
        store = self._opened_store()
        try:
            if store is None:
                raise StoreError("the history database is not open")
            store.restore(records)
            self.post_message(HistoryRestored(len(records), None))
        except StoreError as err:
            self.post_message(HistoryRestored(0, str(err)))

    def on_history_deleted(self, message: HistoryDeleted) -> None:
        if message.error:
            self.notify(f"Nothing deleted: {message.error}", severity="error")
            return
        if message.records:
            self._deleted.append(message.records)
            self.notify(f"Deleted {message.what}; {self.app.keys_of('undo_delete')} in the history list (or ctrl+p "
                        "Undo) brings it back.")
        else:
            self.notify(f"Nothing to delete: {message.what}.")
        self.refresh_bindings()
        self.refresh_history()

    def on_history_restored(self, message: HistoryRestored) -> None:
        if message.error:
            self.notify(f"Not restored: {message.error}", severity="error")
        else:
            self.notify(f"Restored {_rows(message.count)}.")
        self.refresh_bindings()
        self.refresh_history()

    @work(thread=True, group="store")
    def _set_favorite(self, card: DraftCard, favorite: bool) -> None:
        store = self._opened_store()
        try:
            if store is None:
                raise StoreError("the history database is not open")
            store.set_favorite(card.gen_id, favorite)
            self.post_message(FavoriteSet(card, favorite, None))
        except StoreError as err:
            self.post_message(FavoriteSet(card, favorite, str(err)))

    def on_store_opened(self, message: StoreOpened) -> None:
        if message.error:
            self.notify(f"{message.error}; history is off for this session", severity="error", timeout=20)
        else:
            self.refresh_history()

    def on_history_loaded(self, message: HistoryLoaded) -> None:
        if message.error:
            self.notify(message.error, severity="error")
        elif message.search == self.history_pane.query_text:
            self.history_pane.show(message.records)

    def on_draft_saved(self, message: DraftSaved) -> None:
        self._save_next()
        card = message.card
        if message.error is None:
            if card is not None:
                card.saved(message.gen_id)
            self.refresh_history()
            return
        if card is not None:
            card.not_saved()
        # one line per generation, however many of its drafts fail (none when the history is off: that was said)
        if self.store is not None and self._unsaved_job != message.job_id:
            self._unsaved_job = message.job_id
            self.notify(f"Not saved to history: {message.error}. The drafts stay on screen (F4 copies one).",
                        severity="error", timeout=30)

    def on_favorite_set(self, message: FavoriteSet) -> None:
        if message.error:
            self.notify(message.error, severity="error")
            return
        message.card.set_favorite(message.favorite)
        self.notify("Favorited ★" if message.favorite else "Unfavorited")
        self.refresh_history()

    # --- actions ---

    async def action_generate(self) -> None:
        await self._start(await self._new_run(spread=False))

    async def action_spread(self) -> None:
        await self._start(await self._new_run(spread=True))

    async def action_compare_adapters(self) -> None:
        """The prompt on the base model and on each adapter the app can use, at one seed and temperature, in one
        batch. The adapters folder's adapters load first, beside the others (on a server: its adapter only); the
        engine's answer, AdaptersReady, starts the drafts."""
        if not self._can_start():
            return
        self._compare_prompt = await self._typed_text() or self.config.default_prompt
        folder = self.config.adapters_dir if self.location == LOCAL else None  # a server loads no adapter of ours
        self.service.prepare_adapters({name: folder / name for name in adapter_names(folder)})

    async def on_adapters_ready(self, message: AdaptersReady) -> None:
        self.adapter_name, self.adapter_enabled = self._adapter_shown(message.active), message.enabled
        for problem in message.failed:
            self.notify(problem, title="Adapter not compared", severity="warning", timeout=20)
        prompt, self._compare_prompt = self._compare_prompt, None
        if prompt is None:
            return
        if not message.names:
            if self.load_error is None:
                why = ("the server serves no adapter (start it with --adapter)" if self.location != LOCAL
                       else "no adapter is loaded, and the config's adapters_dir has none that loads")
                self.notify(f"Nothing to compare: only the base model ({why}).")
            else:
                self.notify(f"No model is loaded: {self.load_error}", severity="error")
            return
        choices: tuple[str | None, ...] = (None, *message.names)
        if len(choices) > MAX_SPREAD:
            self.notify(f"{len(message.names)} adapters: comparing the first {MAX_SPREAD - 1} with the base model "
                        f"({MAX_SPREAD} drafts at most)", severity="warning")
            choices = choices[:MAX_SPREAD]
        seed = random.randrange(SEED_RANGE)
        await self._start(_Run(prompt, (seed,) * len(choices), spread=False, adapters=choices))

    async def action_regenerate(self) -> None:
        if self._last_run is None:
            self.notify(f"Nothing to rerun yet: generate first ({self.app.keys_of('generate')}).")
            return
        await self._start(self._last_run)

    async def action_refine(self) -> None:
        if (run := await self._refine_run(spread=False)) is not None:
            await self._start(run)

    async def action_refine_spread(self) -> None:
        if (run := await self._refine_run(spread=True)) is not None:
            await self._start(run)

    async def action_continue_draft(self) -> None:
        """Edit the picked draft in $EDITOR; the model then continues the edited text (its reply starts with it)."""
        card = self._picked_draft("continue")
        if card is None:
            return
        try:
            edited = edit_in_editor(self.app, card.text, what="draft")
        except EditorError as err:
            self.notify(str(err), severity="error")
            return
        if not edited.strip():
            self.notify("The edited draft is empty: nothing to continue.")
            return
        *history, last = card.messages
        await self._start(_Run(last["content"], self._seeds(False), False, history=tuple(history), prefill=edited,
                               parent_id=card.gen_id))

    def action_cancel(self) -> None:
        if self.job is not None:
            self.service.cancel(self.job)

    def action_show_keys(self) -> None:
        if self._keys_shown():
            self.app.action_hide_help_panel()
        else:
            self.app.action_show_help_panel()
        self.refresh_bindings()

    def action_temperature_down(self) -> None:
        self.temperature -= STEP

    def action_temperature_up(self) -> None:
        self.temperature += STEP

    def action_top_p_down(self) -> None:
        self.top_p -= STEP

    def action_top_p_up(self) -> None:
        self.top_p += STEP

    def action_previous_draft(self) -> None:
        self.drafts.select_next(-1)

    def action_next_draft(self) -> None:
        self.drafts.select_next(1)

    def action_favorite(self) -> None:
        card = self.drafts.selected
        if card is None or card.gen_id is None:
            self.notify("Select a finished, saved draft to favorite.")
            return
        self._set_favorite(card, not card.favorite)

    def action_copy_draft(self) -> None:
        card = self.drafts.selected
        if card is None or not card.text:
            self.notify("No draft to copy.")
            return
        self.app.copy_to_clipboard(card.text)  # OSC 52: the terminal may take it, or ignore it; it never says
        self._copy_with_system_tool(card.number, card.text)

    @work(thread=True, group="clipboard")
    def _copy_with_system_tool(self, number: int, text: str) -> None:
        tool, problem = copy_with_system_tool(text)
        self.post_message(Copied(number, len(text), tool, problem))

    def on_copied(self, message: Copied) -> None:
        sent = f"Draft #{message.number} ({message.characters} characters) sent to the terminal (OSC 52)"
        if message.tool:
            self.notify(f"{sent} and copied with {message.tool}")
        else:
            self.notify(f"{sent}; the terminal may not pass it on ({message.problem})", severity="warning")

    def action_toggle_adapter(self) -> None:
        if self.adapter_name is None:
            self.notify("No adapter is loaded (see --adapter / the config's adapter).")
            return
        self.service.set_adapter(not self.adapter_enabled)

    def action_next_persona(self) -> None:
        names = [None, *self.base_config.personas]
        if len(names) == 1:
            self.notify("No personas in the config: add [personas.NAME] tables (see the README).")
            return
        self.set_persona(names[(names.index(self.persona) + 1) % len(names)] if self.persona in names else None)

    def set_persona(self, name: str | None) -> None:
        """Apply persona `name` (None: the config as written): system prompt, sampling, adapter, post limit."""
        try:
            config = self.base_config.with_persona(name) if name is not None else self._without_persona()
        except ConfigError as err:
            self.notify(str(err), title="Persona", severity="error")
            return
        adapter_changes = (config.adapter, config.use_adapter) != (self.config.adapter, self.config.use_adapter)
        self.config, self.persona = config, name
        self.temperature, self.top_p = config.sampling.temperature, config.sampling.top_p
        self.max_tokens = config.sampling.max_tokens
        if adapter_changes:
            self._use_persona_adapter()
        self.notify(f"Persona {name}" if name else "No persona: the config's own settings")

    def _without_persona(self) -> Config:
        config = self.base_config.with_persona(None)
        if config.persona is None:
            return config
        plain = dataclasses.replace(self.base_config, persona=None)  # the config's default persona set aside
        return plain.with_persona(None)

    def _use_persona_adapter(self) -> None:
        config = self.config
        if not config.use_adapter:
            self.service.use_adapter(None, None)
        elif config.adapter is not None and config.adapter != self._dirs[1]:
            self.service.use_adapter(config.adapter.name, config.adapter)
        elif config.adapter is not None:
            self.service.set_adapter(True)

    def choose_adapter(self, name: str | None) -> None:
        """Serve with adapter `name` of the config's adapters folder, or (None) with the base model alone."""
        path = self.config.adapters_dir / name if name is not None and self.config.adapters_dir else None
        self.service.use_adapter(name, path)

    def choose_model(self, model_dir: Path) -> None:
        """Switch to the model in `model_dir` without restarting: it loads on the engine thread, the old one is
        released first."""
        if self.job is not None:
            self.notify("A generation is running: wait for it or cancel it (escape) before switching models.")
            return
        old = self.model_name
        self._dirs = (model_dir, None)
        self.load_error = None
        self.model_name, self.adapter_name, self.adapter_enabled = model_dir.name, None, False
        self.load_phase, self.state = "reading", "loading"
        self.query_one("#status", StatusBar).progress(0, 1)
        self.service.reload(model_dir, None)
        self.notify(f"Loading {model_dir.name}; {old} is unloaded meanwhile (a draft asked for now waits for it).")

    def palette_commands(self) -> list[SystemCommand]:
        """The command palette's persona, adapter, model and history-pruning entries."""
        commands = [SystemCommand(f"Persona: {name}", "apply its system prompt, sampling, adapter and post limit",
                                  lambda name=name: self.set_persona(name))
                    for name in self.base_config.personas]
        if self.base_config.personas:
            commands.append(SystemCommand("Persona: none", "the config's own settings", lambda: self.set_persona(None)))
        folder = self.config.adapters_dir
        commands += [SystemCommand(f"Adapter: {name}", f"serve with {folder / name}",
                                   lambda name=name: self.choose_adapter(name))
                     for name in adapter_names(folder)]
        commands.append(SystemCommand("Adapter: none", "the base model alone", lambda: self.choose_adapter(None)))
        commands += [SystemCommand(f"Model: {path.name}", f"load {path} (the current model is released)",
                                   lambda path=path: self.choose_model(path))
                     for path in _model_dirs(self.config.models_dir)]
        commands += [SystemCommand(f"Prune history: unfavorited rows older than {days} days",
                                   f"undo with {self.app.keys_of('undo_delete')}", lambda days=days: self._prune(days))
                     for days in PRUNE_DAYS]
        return commands

    def action_delete_history(self) -> None:
        record = self.history_pane.highlighted
        if record is None or record.id is None:
            self.notify("No history row to delete.")
            return
        self._delete([record.id])

    def action_undo_delete(self) -> None:
        if not self._deleted:
            self.notify("Nothing to undo.")
            return
        self._restore(self._deleted.pop())

    def action_toggle_history(self) -> None:
        history = self.history_pane
        history.display = not history.display
        self.query_one("#main").set_class(history.display, "-history-open")
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
        self.load_phase = message.phase
        self.query_one("#status", StatusBar).progress(message.done, message.total)

    def on_loaded(self, message: Loaded) -> None:
        self.model_name = _shown_name(self._dirs[0], message.model_name)
        self.adapter_name = self._adapter_shown(message.adapter_name)
        self.adapter_enabled = message.adapter_enabled
        self.state = "generating" if self.job is not None else "ready"

    def on_load_failed(self, message: LoadFailed) -> None:
        self.load_error = message.error
        self.drafts.set_hint(f"The model did not load: {message.error}")
        self.state = "failed"
        self.notify(message.error, title="The model did not load", severity="error", timeout=60)

    def on_adapter_changed(self, message: AdapterChanged) -> None:
        self.adapter_name = self._adapter_shown(message.name)
        self.adapter_enabled = message.enabled
        if message.error:
            self.notify(message.error, title="Adapter not switched", severity="error")
        elif message.name is None:
            self.notify("No adapter: the base model alone")
        else:
            self.notify(f"Adapter {message.name} {'on' if message.enabled else 'off'}")

    def on_draft_delta(self, message: DraftDelta) -> None:
        if card := self._card_of(message):
            card.append(message.text)  # redrawn by the drafts pane's timer

    def on_draft_restarted(self, message: DraftRestarted) -> None:
        if card := self._card_of(message):
            card.restart(message.attempt)

    def on_draft_finished(self, message: DraftFinished) -> None:
        draft = message.draft
        self.decode_tok_s = draft.stats.decode_tok_s
        card = self._card_of(message)
        if card is not None:
            card.finish(draft.text, draft.seed, draft.stats.decode_tok_s, draft.finish_reason)
        self._queue_save(message.job_id, card, message.record)  # saved whether or not it is still on screen

    def on_generation_finished(self, message: GenerationFinished) -> None:
        if self.job is None or message.job_id != self.job.id:
            return
        self.job = None
        self._job_done.set()
        self.drafts.flush()
        if message.error:
            self.notify(message.error, title="Generation failed", severity="error", timeout=30)
        self.state = "failed" if self.load_error else "ready"

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
        # the conversation the draft answered, without the system message: the persona in use gives that
        messages = [m for m in record.messages or [{"role": "user", "content": record.prompt}] if m["role"] != "system"]
        card = DraftCard(1, record.temperature, record.seed, self.config.post_limit, messages=messages,
                         prefill=record.prefill)
        await self.drafts.show_cards([card])
        card.finish(record.text, record.seed, record.decode_tok_s, record.finish_reason)
        card.saved(record.id)
        card.set_favorite(record.favorite)
        self.editor.text = record.prompt
        # a rerun now repeats this draft: its conversation and seed, at the current temperature and adapter
        self._last_run = _Run(record.prompt, (record.seed,), spread=False, history=tuple(messages[:-1]),
                              prefill=record.prefill, parent_id=record.parent_id)


def _rows(count: int) -> str:
    return f"{count} row{'s' if count != 1 else ''}"


def _model_dirs(models_dir: Path | None) -> list[Path]:
    """The models in the config's models folder: its subdirectories with a config.json."""
    if models_dir is None or not models_dir.is_dir():
        return []
    return sorted(p for p in models_dir.iterdir() if (p / "config.json").is_file())
