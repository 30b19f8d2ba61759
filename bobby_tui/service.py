"""The engine thread: one long-lived thread owns the model, the UI talks to it through a queue.

MLX binds its streams to the thread that created them, so the model is loaded, used and dropped on this thread
only; the UI thread never touches MLX. Results go back to the UI as Textual messages, which
`MessagePump.post_message` delivers thread-safely.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

from textual.message import Message
from textual.message_pump import MessagePump

from bobby_tui.config import PostProcess
from bobby_tui.engine_thread import release_mlx_streams

# (model_dir, adapter_dir, progress callback) -> an object with the `inference.Engine` interface.
EngineLoader = Callable[[Path, "Path | None", Callable[[Any], None]], Any]


def load_engine(model_dir: Path, adapter_dir: Path | None, progress: Callable[[Any], None]) -> Any:
    """The real engine (imported here, on the engine thread, so the UI thread never loads MLX)."""
    from inference import Engine

    return Engine.load(model_dir, adapter_dir, progress=progress)


_job_ids = count(1)


@dataclass
class ComposeJob:
    """One generation: N drafts of one prompt decoded together, optionally continuing a conversation."""

    prompt: str  # the last user turn
    system_prompt: str
    drafts: list  # list[inference.SamplingParams]
    max_tokens: int
    postprocess: PostProcess
    post_limit: int
    history: list[dict[str, str]] = field(default_factory=list)  # the turns before `prompt`: user, assistant, ...
    prefill: str | None = None  # every draft starts with this text, and the model continues it
    persona: str | None = None  # recorded with each draft
    parent_id: int | None = None  # the stored draft this job refines or continues
    # per draft, the adapter it runs with (None: the base model); None: every draft runs as the adapter is switched
    adapters: tuple[str | None, ...] | None = None
    id: int = field(default_factory=lambda: next(_job_ids))
    cancelled: threading.Event = field(default_factory=threading.Event)


# --- messages to the UI (posted from the engine thread; MessagePump.post_message is thread-safe) --------------


@dataclass
class LoadProgressed(Message):
    """How far the load is: `phase` is one of inference.api.LOAD_PHASES, `done` of `total` within it."""

    done: int
    total: int
    phase: str = "reading"

    def can_replace(self, message: Message) -> bool:
        # a burst of progress (one per tensor) collapses to the newest while the UI is busy
        return isinstance(message, LoadProgressed)


@dataclass
class Loaded(Message):
    model_name: str
    adapter_name: str | None
    adapter_enabled: bool


@dataclass
class LoadFailed(Message):
    error: str


@dataclass
class AdapterChanged(Message):
    """The adapter in use: `name` (None: no adapter is loaded), switched on or off; `error` if a switch failed."""

    name: str | None
    enabled: bool
    error: str | None = None


@dataclass
class AdaptersReady(Message):
    """The answer to `prepare_adapters`: every adapter the engine has loaded now (in the order loaded), the one the
    adapter switch uses and whether it is on, and one line for each adapter folder that did not load."""

    names: tuple[str, ...]
    active: str | None
    enabled: bool
    failed: tuple[str, ...] = ()


@dataclass
class DraftDelta(Message):
    job_id: int
    index: int
    text: str


@dataclass
class DraftRestarted(Message):
    """The composer rejected a draft (e.g. too long) and is generating it again: its text starts over."""

    job_id: int
    index: int
    attempt: int


@dataclass
class DraftFinished(Message):
    job_id: int
    draft: Any  # bobby_tui.composer.Draft
    record: Any  # bobby_tui.storage.GenerationRecord, for the UI to save (off its thread)

    @property
    def index(self) -> int:
        return self.draft.draft


@dataclass
class GenerationFinished(Message):
    job_id: int
    cancelled: bool
    error: str | None


# --- the service ------------------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised from the load progress callback to abandon a load when the app quits."""


@dataclass(frozen=True)
class _SetAdapter:
    enabled: bool


@dataclass(frozen=True)
class _UseAdapter:
    name: str | None  # None: the base model alone
    path: Path | None


@dataclass(frozen=True)
class _LoadAdapters:
    paths: dict[str, Path]  # name -> folder


@dataclass(frozen=True)
class _Reload:
    model_dir: Path
    adapter_dir: Path | None


_STOP = object()


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


class EngineService:
    """Owns the engine thread. Call `start()` once; `submit()` jobs; `stop()` before the app exits."""

    def __init__(
        self,
        target: MessagePump,
        model_dir: Path,
        adapter_dir: Path | None,
        use_adapter: bool,
        loader: EngineLoader = load_engine,
        warmup_batches: tuple[int, ...] = (1,),
    ) -> None:
        self._target = target
        self._warmup_batches = warmup_batches
        self._model_dir, self._adapter_dir, self._use_adapter = model_dir, adapter_dir, use_adapter
        self._loader = loader
        self._requests: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        self._current: ComposeJob | None = None
        self._thread = threading.Thread(target=self._run, name="bobby-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: ComposeJob) -> None:
        """Queue a generation; it runs after the model has loaded and earlier jobs are done."""
        self._requests.put(job)

    def cancel(self, job: ComposeJob) -> None:
        """Stop `job` at its next token (or before it starts); what it generated so far is kept."""
        job.cancelled.set()

    def set_adapter(self, enabled: bool) -> None:
        """Switch the adapter on or off between generations; answered by AdapterChanged."""
        self._requests.put(_SetAdapter(enabled))

    def use_adapter(self, name: str | None, path: Path | None) -> None:
        """Serve the next jobs with adapter `name` from `path` (loaded once, kept beside the others), or with none;
        answered by AdapterChanged."""
        self._requests.put(_UseAdapter(name, path))

    def prepare_adapters(self, paths: dict[str, Path]) -> None:
        """Load each adapter of `paths` (name -> folder) that the engine has no adapter of that name for, beside the
        others, without switching to it; answered by AdaptersReady, with every adapter loaded then."""
        self._requests.put(_LoadAdapters(paths))

    def reload(self, model_dir: Path, adapter_dir: Path | None) -> None:
        """Load another model after the jobs queued so far: the current one is released first (two models need not
        fit in memory at once), so jobs queued meanwhile wait for the new one. Answered like the first load
        (LoadProgressed, then Loaded or LoadFailed)."""
        self._requests.put(_Reload(model_dir, adapter_dir))

    def stop(self, timeout: float = 30.0) -> None:
        """End the thread: the running job is cancelled, a load in progress is abandoned."""
        self._stopping.set()
        if self._current is not None:
            self._current.cancelled.set()
        self._requests.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- everything below runs on the engine thread ---

    def _post(self, message: Message) -> None:
        if not self._stopping.is_set():
            self._target.post_message(message)

    def _run(self) -> None:
        engine = self._load()
        while (request := self._requests.get()) is not _STOP:
            if isinstance(request, _Reload):
                del engine  # released before the new one loads: its memory is free for it
                self._model_dir, self._adapter_dir = request.model_dir, request.adapter_dir
                self._use_adapter = True  # the new model's adapter, where it has one
                engine = self._load()
            elif isinstance(request, _SetAdapter):
                self._set_adapter(engine, request.enabled)
            elif isinstance(request, _UseAdapter):
                self._switch_adapter(engine, request.name, request.path)
            elif isinstance(request, _LoadAdapters):
                self._load_adapters(engine, request.paths)
            elif engine is None:
                self._post(GenerationFinished(request.id, cancelled=False, error="no model is loaded"))
            else:
                self._current = request
                self._compose(engine, request)
                self._current = None
        # The engine (and every MLX array it holds) is released here, on the thread that made it, then its streams.
        del engine
        release_mlx_streams()

    def _load(self) -> Any:
        def progress(update: Any) -> None:
            if self._stopping.is_set():
                raise _Stop
            self._post(LoadProgressed(update.done, update.total, update.phase))

        try:
            engine = self._loader(self._model_dir, self._adapter_dir, progress)
            engine.adapter_enabled = self._use_adapter and engine.has_adapter
            # Kernels compile per batch size on a GPU: do it now for one draft and a spread, so the user's first
            # generation of either kind streams at full speed. The engine says nothing while it warms up: say it.
            self._post(LoadProgressed(0, 1, "warming up"))
            engine.warmup(self._warmup_batches)
        except _Stop:
            return None
        except Exception as err:  # InferenceError's message names the file; anything else gets the model dir
            from inference import InferenceError

            message = _one_line(err) if isinstance(err, InferenceError) else f"{self._model_dir}: {_one_line(err)}"
            self._post(LoadFailed(message))
            return None
        self._post(Loaded(engine.model_name, engine.adapter_name, engine.adapter_enabled))
        return engine

    # The engine's adapter interface is used here and in _load only.

    def _adapter_state(self, engine: Any, error: str | None = None) -> AdapterChanged:
        if engine is None or not engine.has_adapter:
            return AdapterChanged(None, False, error)
        return AdapterChanged(engine.adapter_name, engine.adapter_enabled, error)

    def _set_adapter(self, engine: Any, enabled: bool) -> None:
        if engine is not None and engine.has_adapter:
            engine.adapter_enabled = enabled
        self._post(self._adapter_state(engine))

    def _switch_adapter(self, engine: Any, name: str | None, path: Path | None) -> None:
        if engine is None:
            self._post(AdapterChanged(None, False, "no model is loaded"))
            return
        try:
            if name is None:
                engine.adapter_enabled = False
            else:
                if name not in engine.adapter_names:
                    engine.load_adapter(name, path)
                engine.active_adapter = name
                engine.adapter_enabled = True
        except Exception as err:  # a bad adapter folder: one line; the engine keeps the adapter it had
            self._post(self._adapter_state(engine, _adapter_error(err, path)))
            return
        self._post(self._adapter_state(engine))

    def _load_adapters(self, engine: Any, paths: dict[str, Path]) -> None:
        if engine is None:
            self._post(AdaptersReady((), None, False))
            return
        failed = []
        for name, path in paths.items():
            if name in engine.adapter_names:  # the one loaded under that name stays
                continue
            try:
                engine.load_adapter(name, path)
            except Exception as err:  # one folder that does not load leaves the others to compare
                failed.append(_adapter_error(err, path))
        active = engine.adapter_name if engine.has_adapter else None
        self._post(AdaptersReady(tuple(engine.adapter_names), active, bool(active) and engine.adapter_enabled,
                                 tuple(failed)))

    def _compose(self, engine: Any, job: ComposeJob) -> None:
        from bobby_tui.composer import DraftRetry, compose
        from inference import TokenDelta

        system = job.system_prompt or None
        error = None
        try:
            events = compose(
                engine, job.prompt, system, job.drafts, job.max_tokens, job.postprocess, job.post_limit,
                should_cancel=job.cancelled.is_set, history=job.history or None, prefill=job.prefill,
                adapters=job.adapters,
            )
            for event in events:
                if isinstance(event, TokenDelta):
                    self._post(DraftDelta(job.id, event.draft, event.text))
                elif isinstance(event, DraftRetry):
                    self._post(DraftRestarted(job.id, event.draft, event.attempt))
                else:
                    self._post(DraftFinished(job.id, event, _record(job, event, engine)))
        except Exception as err:  # one line in the app; the engine thread keeps serving
            error = _one_line(err)
        self._post(GenerationFinished(job.id, cancelled=job.cancelled.is_set(), error=error))


def _adapter_error(err: BaseException, path: Path | None) -> str:
    """An adapter folder that did not load, in one line: InferenceError's message names the file, any other gets
    the folder."""
    from inference import InferenceError

    return _one_line(err) if isinstance(err, InferenceError) else f"{path}: {_one_line(err)}"


def _record(job: ComposeJob, draft: Any, engine: Any) -> Any:
    """The history row of one finished draft of `job`, with the conversation it continued."""
    from bobby_tui.composer import to_record

    return to_record(draft, engine, job.prompt, job.system_prompt or None, history=job.history, prefill=job.prefill,
                     persona=job.persona, parent_id=job.parent_id)
