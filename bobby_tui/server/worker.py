"""The engine thread: the one thread that owns the model (MLX streams are per thread) and runs the batch.

It loops: take commands (submit, cancel, stop) from a thread-safe queue, hand waiting requests to the
``BatchGenerator`` while their rows fit under the cap (in arrival order), run one batch step (a prefill chunk and
one decoded token for every running row), and pass that step's events to the asyncio side with one
``loop.call_soon_threadsafe`` per step, onto each request's own asyncio queue. Idle, it waits a moment after a
request for those arriving with it, so that they prefill together.

Each request names the adapter its rows run with (``GenerationRequest.adapters``): rows with and without the adapter
share the running batch, so a request never waits for the batch to drain to switch.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bobby_tui.engine_thread import release_mlx_streams
from inference.api import DraftDone, GenerationRequest, TokenDelta
from inference.errors import InferenceError

from .protocol import ApiError, CompletionSpec, shutting_down_error


@dataclass
class Accepted:
    """The request is valid and waits for rows (or has them)."""

    prompt_tokens: int


@dataclass
class Admitted:
    """The request's rows joined the batch (seen by the asyncio side only, for its queue count)."""


@dataclass
class Rejected:
    """The engine refused the request before it started (the prompt does not fit, the template failed...)."""

    error: ApiError


@dataclass
class Aborted:
    """The request ended early for the server's reason (shutdown, an engine failure): its stream ends with error."""

    error: ApiError


Event = Accepted | Admitted | Rejected | Aborted | TokenDelta | DraftDone


class Job:
    """One HTTP request's generation: built and read on the asyncio side, its rows run on the engine thread."""

    __slots__ = ("spec", "events", "admitted", "finished", "drafts_left", "request_id", "request")

    def __init__(self, spec: CompletionSpec):
        self.spec = spec
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.admitted = False  # asyncio side: rows joined the batch
        self.finished = False  # asyncio side: every draft done, or rejected / aborted
        self.drafts_left = spec.n  # asyncio side
        self.request_id: int | None = None  # engine thread: the batch's id for it
        self.request: GenerationRequest | None = None  # engine thread: with the adapter its rows run with


@dataclass(frozen=True)
class EngineInfo:
    model_name: str
    adapter_name: str | None
    adapter_default: bool
    context_length: int
    # for the composer's extensions (/bobby/v1/...): the template renders off the engine thread (no MLX in it)
    tokenizer: Any = field(default=None, compare=False, repr=False)


# (engine, max_rows) -> an object with inference.batching.BatchGenerator's submit / cancel / step / has_work /
# active_rows; called on the engine thread.
BatchFactory = Callable[[Any, int], Any]


def batch_generator(engine: Any, max_rows: int) -> Any:
    from inference.batching import BatchGenerator  # here, on the engine thread: MLX is imported by the thread using it

    return BatchGenerator(engine, max_rows)

_SUBMIT, _CANCEL, _STOP = "submit", "cancel", "stop"
# An idle engine that gets a request waits until none has come for ARRIVAL_QUIET_S (at most ARRIVAL_WAIT_S in all):
# clients arriving together then prefill in one pass, instead of the first alone and the rest after it.
ARRIVAL_QUIET_S = 0.002
ARRIVAL_WAIT_S = 0.02


class EngineWorker:
    def __init__(self, load: Callable[[], Any], batch_factory: BatchFactory, max_rows: int,
                 log: Callable[[str], None], arrival_quiet_s: float = ARRIVAL_QUIET_S,
                 arrival_wait_s: float = ARRIVAL_WAIT_S):
        self._load, self._batch_factory, self._max_rows, self._log = load, batch_factory, max_rows, log
        self._arrival_quiet_s, self._arrival_wait_s = arrival_quiet_s, arrival_wait_s
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="bobby-engine", daemon=True)
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.info: EngineInfo | None = None
        self.active_rows = 0  # published by the engine thread after each step, read by /health
        self.peak_rows = 0
        self.steps = 0

    # --- the asyncio side -----------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> EngineInfo:
        """Start the thread and wait until the model is loaded; a load error is raised here."""
        self._loop = loop
        self._thread.start()
        self._ready.wait()
        if self._load_error is not None:
            raise self._load_error
        return self.info

    def submit(self, job: Job) -> None:
        self._commands.put((_SUBMIT, job))

    def cancel(self, job: Job) -> None:
        """Free the job's rows before the next step (or drop it from the queue)."""
        self._commands.put((_CANCEL, job))

    def stop(self, timeout: float = 5.0) -> None:
        self._commands.put((_STOP, None))
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _deliver(self, items: list[tuple[Job, Event]]) -> None:
        for job, event in items:
            if isinstance(event, Admitted):
                job.admitted = True
                continue
            if job.finished or (type(event) is TokenDelta and not job.spec.stream):
                continue  # a finished job reads nothing more; a whole-response job reads only DraftDone
            if isinstance(event, DraftDone):
                job.drafts_left -= 1
                job.finished = job.drafts_left == 0
            elif isinstance(event, (Rejected, Aborted)):
                job.finished = True
            job.events.put_nowait(event)

    # --- the engine thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._load_and_serve()
        finally:
            release_mlx_streams()  # after the engine is gone: this thread's MLX streams, while Python still runs

    def _load_and_serve(self) -> None:
        try:
            engine = self._load()
            engine.warmup()
            if engine.compiles_per_batch_size:  # every batch size a client's rows may make, one prompt's or padded
                engine.warmup(range(2, self._max_rows + 1))
                engine.warmup(range(2, self._max_rows + 1), own_prompts=True)
            self.info = EngineInfo(engine.model_name, engine.adapter_name, engine.adapter_enabled,
                                   engine.model.config.max_position_embeddings, engine.tokenizer)
        except BaseException as err:  # re-raised by start() on the caller's thread
            self._load_error = err
            return
        finally:
            self._ready.set()
        self._serve(engine, self.info.adapter_default)
        del engine  # its MLX arrays are released on the thread that made them

    def _serve(self, engine: Any, adapter_default: bool) -> None:
        batch = self._batch_factory(engine, self._max_rows)
        waiting: deque[Job] = deque()
        running: dict[int, list] = {}  # request id -> [job, drafts not yet done]: the batch's requests and rows
        outbox: list[tuple[Job, Event]] = []
        while True:
            for kind, job in self._take_commands(block=not batch.has_work and not waiting):
                if kind == _STOP:
                    return
                if kind == _SUBMIT:
                    try:
                        event = self._prepare(engine, job, adapter_default)
                    except Exception as err:  # a bug, not the client's: answer 500 and keep serving
                        self._log(f"preparing a request failed: {type(err).__name__}: {' '.join(str(err).split())}")
                        event = Rejected(ApiError(500, "internal server error"))
                    outbox.append((job, event))
                    if isinstance(event, Accepted):
                        waiting.append(job)
                elif job in waiting:
                    waiting.remove(job)
                elif job.request_id in running:
                    batch.cancel(job.request_id)
            while waiting and self._admit(engine, batch, waiting[0], running, outbox):
                waiting.popleft()
            if batch.has_work:
                try:
                    events = batch.step()
                except Exception as err:  # the batch's state is unknown: end its requests, start a new one
                    self._log(f"engine step failed: {type(err).__name__}: {' '.join(str(err).split())}")
                    error = ApiError(500, "the engine failed while generating; the request was ended")
                    outbox += [(entry[0], Aborted(error)) for entry in running.values()]
                    running.clear()
                    batch = self._batch_factory(engine, self._max_rows)
                    events = []
                for request_id, event in events:
                    entry = running.get(request_id)
                    if entry is None:
                        continue
                    outbox.append((entry[0], event))
                    if isinstance(event, DraftDone):
                        entry[1] -= 1
                        if entry[1] == 0:
                            del running[request_id]
                self.steps += 1
            self.active_rows = batch.active_rows
            self.peak_rows = max(self.peak_rows, self.active_rows)
            if outbox:
                self._loop.call_soon_threadsafe(self._deliver, outbox)
                outbox = []

    def _take_commands(self, block: bool) -> list[tuple[str, Job | None]]:
        """The commands queued; with ``block`` (the engine is idle), the first one waited for and, when it is a
        request, those that come right after it (ARRIVAL_QUIET_S)."""
        commands = [self._commands.get()] if block else []
        if commands and commands[0][0] == _SUBMIT:
            deadline = time.monotonic() + self._arrival_wait_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    commands.append(self._commands.get(timeout=min(self._arrival_quiet_s, left)))
                except queue.Empty:
                    break
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                return commands

    def _prepare(self, engine: Any, job: Job, adapter_default: bool) -> Event:
        """Render and measure the prompt: Accepted, or Rejected with the reason."""
        spec = job.spec
        try:
            prompt = (engine.tokenizer.apply_chat_template(spec.messages, add_generation_prompt=True,
                                                           enable_thinking=False) if spec.chat else spec.prompt)
            prompt_tokens = len(engine.tokenizer.encode(prompt))
        except InferenceError as err:  # the template failed on this conversation: the client's to fix
            return Rejected(ApiError(400, err.problem, "messages"))
        param = "messages" if spec.chat else "prompt"
        if prompt_tokens == 0:
            return Rejected(ApiError(400, f"{param} encode to no tokens", param))
        context = self.info.context_length
        if prompt_tokens + spec.max_tokens > context:
            return Rejected(ApiError(400, f"{param} take {prompt_tokens} tokens: with max_tokens {spec.max_tokens} "
                                     f"that exceeds the model's context of {context} tokens", param,
                                     "context_length_exceeded"))
        use_adapter = adapter_default if spec.adapter is None else spec.adapter
        adapter = engine.active_adapter if use_adapter else None  # per row: the batch need not drain to switch
        job.request = GenerationRequest(prompt, list(spec.drafts), spec.max_tokens, spec.stop,
                                        adapters=(adapter,) * spec.n)
        return Accepted(prompt_tokens)

    def _admit(self, engine: Any, batch: Any, job: Job, running: dict, outbox: list) -> bool:
        """Give the job to the batch if its rows fit beside those of the requests it holds; False: it waits."""
        if sum(entry[1] for entry in running.values()) + job.spec.n > self._max_rows:
            return False
        try:
            job.request_id = batch.submit(job.request)
        except ValueError as err:  # ParameterError included: the batch refused what the protocol let through
            outbox.append((job, Aborted(ApiError(400, " ".join(str(err).split())))))
            return True
        running[job.request_id] = [job, job.spec.n]
        outbox.append((job, Admitted()))
        return True


def abort_all(jobs: list[Job]) -> None:
    """On shutdown (asyncio side): every open request ends now with the shutdown error."""
    for job in jobs:
        if not job.finished:
            job.finished = True
            job.events.put_nowait(Aborted(shutting_down_error()))
