"""The engine service and the drafts pane, driven by the fake engine: threading, cancel, buffered redraws."""

from __future__ import annotations

import threading
from pathlib import Path

from fake_engine import WORDS, FakeEngine, failing_loader, fake_loader
from test_app_support import run_async, wait_until
from textual.app import App
from textual.message import Message
from textual.widgets import Static

from bobby_tui.config import PostProcess
from bobby_tui.service import (
    ComposeJob,
    DraftDelta,
    DraftFinished,
    EngineService,
    GenerationFinished,
    LoadFailed,
    LoadProgressed,
)
from bobby_tui.widgets.draft_card import DraftCard
from inference import InferenceError, SamplingParams

MODEL = Path("/models/fake")


class Recorder(App):
    """An app that only collects the service's messages."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Message] = []
        self.done = threading.Event()

    def record(self, message: Message) -> None:
        self.received.append(message)

    on_load_progressed = on_loaded = on_load_failed = on_draft_delta = on_draft_finished = record

    def on_generation_finished(self, message: GenerationFinished) -> None:
        self.record(message)
        self.done.set()

    def of(self, kind: type) -> list:
        return [m for m in self.received if isinstance(m, kind)]


def job(drafts: int = 1, max_tokens: int = 64) -> ComposeJob:
    params = [SamplingParams(temperature=0.7 + 0.1 * i, seed=10 + i) for i in range(drafts)]
    # min_length 0: no retries, so the fake's stream comes through as is
    return ComposeJob("Write a post.", "", params, max_tokens, PostProcess(min_length=0), 300)


async def run_until_done(pilot, app: Recorder) -> None:
    await wait_until(pilot, app.done.is_set)


@run_async
async def test_the_engine_is_loaded_and_used_on_one_thread_that_is_not_the_ui_thread():
    loaded_on: list[threading.Thread] = []
    engine = FakeEngine()

    def loader(model_dir, adapter_dir, progress):
        loaded_on.append(threading.current_thread())
        return fake_loader(engine)(model_dir, adapter_dir, progress)

    app = Recorder()
    async with app.run_test() as pilot:
        service = EngineService(app, MODEL, None, use_adapter=False, loader=loader)
        service.start()
        service.submit(job(drafts=2))
        await run_until_done(pilot, app)
        service.stop()
    assert engine.thread is loaded_on[0]
    assert engine.thread is not threading.main_thread()
    phases = [(m.phase, m.done, m.total) for m in app.of(LoadProgressed)]
    # the loader's phases, then the service's own around the warm-up (a burst may collapse to its newest)
    assert phases[-1] == ("warming up", 0, 1)
    sent = [("reading", 50, 100), ("reading", 100, 100), ("preparing", 0, 1), ("warming up", 0, 1)]
    assert phases == sorted(phases, key=sent.index)  # in order, some dropped for newer ones
    assert engine.warmed_up == [(1,)]
    finished = app.of(DraftFinished)
    assert sorted(m.index for m in finished) == [0, 1]
    for message in finished:
        streamed = "".join(d.text for d in app.of(DraftDelta) if d.index == message.index)
        assert message.draft.text == streamed
        assert message.record.text == streamed and message.record.model == "fake-qwen3"
    assert app.of(GenerationFinished)[0].error is None


@run_async
async def test_cancel_stops_the_stream_and_keeps_what_was_generated():
    engine = FakeEngine(token_delay=0.02)
    app = Recorder()
    async with app.run_test() as pilot:
        service = EngineService(app, MODEL, None, use_adapter=False, loader=fake_loader(engine))
        service.start()
        running = job()
        service.submit(running)
        await wait_until(pilot, engine.started.is_set)
        service.cancel(running)
        await run_until_done(pilot, app)
        service.stop()
    (finished,) = app.of(DraftFinished)
    assert finished.draft.finish_reason == "cancelled"
    assert 0 < len(finished.draft.text.split()) < len(WORDS)
    assert finished.draft.text == "".join(d.text for d in app.of(DraftDelta))
    assert app.of(GenerationFinished)[0].cancelled


@run_async
async def test_a_load_error_is_one_message_and_later_jobs_are_answered():
    broken = failing_loader(InferenceError(MODEL / "config.json", "no such file"))
    app = Recorder()
    async with app.run_test() as pilot:
        service = EngineService(app, MODEL, None, use_adapter=False, loader=broken)
        service.start()
        service.submit(job())
        await run_until_done(pilot, app)
        service.stop()
    assert [m.error for m in app.of(LoadFailed)] == ["/models/fake/config.json: no such file"]
    assert app.of(GenerationFinished)[0].error == "no model is loaded"


@run_async
async def test_a_draft_card_buffers_streamed_text_until_it_is_flushed():
    class CardApp(App):
        def compose(self):
            yield DraftCard(1, 0.7, 42, post_limit=10)

    app = CardApp()
    async with app.run_test() as pilot:
        card = app.query_one(DraftCard)
        body = card.query_one(".draft-body", Static)
        card.append("Hello")
        card.append(" world!")
        await pilot.pause()
        assert "Hello" not in str(body.render())  # not redrawn per token
        card.flush()
        await pilot.pause()
        assert "Hello world!" in str(body.render())
        assert card.has_class("-over")  # 12 characters against a limit of 10
        assert "12 / 10" in str(card.query_one(".draft-meter").render())


def test_a_burst_of_load_progress_collapses_to_the_newest():
    older, newer = LoadProgressed(10, 100), LoadProgressed(20, 100)
    assert newer.can_replace(older) and LoadProgressed(0, 1, "warming up").can_replace(newer)
    assert not newer.can_replace(GenerationFinished(1, cancelled=False, error=None))


@run_async
async def test_the_engine_thread_drops_the_engine_then_releases_its_mlx_streams(monkeypatch):
    """MLX aborts at exit now and then unless each thread that used it calls clear_streams before it ends."""
    import sys
    import weakref
    from types import SimpleNamespace

    made: list[weakref.ref] = []

    def loader(model_dir, adapter_dir, progress):  # keeps no reference to the engine, as load_engine keeps none
        engine = FakeEngine()
        made.append(weakref.ref(engine))
        return fake_loader(engine)(model_dir, adapter_dir, progress)

    released: list[tuple[threading.Thread, bool]] = []  # (the calling thread, whether the engine was still alive)
    stub = SimpleNamespace(clear_streams=lambda: released.append((threading.current_thread(), made[0]() is not None)))
    monkeypatch.setitem(sys.modules, "mlx.core", stub)
    app = Recorder()
    async with app.run_test() as pilot:
        service = EngineService(app, MODEL, None, use_adapter=False, loader=loader)
        service.start()
        service.submit(job())
        await run_until_done(pilot, app)
        engine_thread = service._thread
        app.received.clear()  # the messages hold the records, not the engine; dropped all the same
        service.stop()
    assert released == [(engine_thread, False)]
