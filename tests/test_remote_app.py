"""The composer app on `bobby-tui serve`: drafts, spreads, the adapter toggle and the status bar as in-process, and
the server going away mid-draft (one message, the text kept and saved) and coming back."""

from __future__ import annotations

import random
import socket

import pytest
from fixtures import write_adapter
from server_helpers import ServerProcess, long_stream_body
from test_app_support import generate, generate_new, notes, run_async, wait_until

from bobby_tui.app import BobbyApp
from bobby_tui.config import Config, PostProcess, Sampling
from bobby_tui.demo import DEMO_ADAPTER_DIR, DEMO_MODEL_DIR
from bobby_tui.engines import EngineChoice
from bobby_tui.paths import db_path
from bobby_tui.storage import Store

SIZE = (120, 40)
PROMPT = "Write a post about the sea"


@pytest.fixture(autouse=True)
def fixed_seeds(monkeypatch):
    seeds = iter(range(1000, 2000))
    monkeypatch.setattr(random, "randrange", lambda stop: next(seeds))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def remote_app(url: str, config: Config | None = None) -> BobbyApp:
    choice = EngineChoice(url)
    config = config or Config(sampling=Sampling(max_tokens=32), postprocess=PostProcess(min_length=0))
    return BobbyApp(config, DEMO_MODEL_DIR, DEMO_ADAPTER_DIR, loader=choice.loader(), location=choice.location)


def stored() -> list:
    with Store(db_path()) as store:
        return store.history()


@run_async
async def test_the_composer_on_a_server_drafts_spreads_and_toggles_the_adapter(tmp_path):
    server = ServerProcess(user_dirs=tmp_path / "serve")
    try:
        app = remote_app(server.url)
        async with app.run_test(size=SIZE) as pilot:
            screen = app.screen
            await wait_until(pilot, lambda: screen.state == "ready", timeout=30)
            status = str(screen.query_one("#status-text").render())
            assert server.url in status and "model" in status and "adapter adapter (on)" in status
            await pilot.press(*PROMPT)
            await generate(pilot, "f6")  # a spread: one request per temperature, batched by the server
            assert len(screen.drafts.cards) == 3 and all(card.text.strip() for card in screen.drafts.cards)
            assert server.health()["peak_rows"] >= 3
            await pilot.press("ctrl+t")
            await wait_until(pilot, lambda: not screen.adapter_enabled)
            await generate(pilot, "ctrl+r")  # rerun: the same seeds without the adapter
        rows = stored()
        tuned, base = rows[3:], rows[:3]  # newest first
        assert sorted(r.seed for r in base) == sorted(r.seed for r in tuned)
        assert all(r.adapter == "adapter" and r.model == "model" for r in tuned)
        assert all(r.adapter is None for r in base)
    finally:
        server.kill()


@run_async
async def test_the_server_going_away_mid_draft_is_one_message_and_the_text_is_saved_then_it_reconnects(
        tmp_path, monkeypatch):
    body = long_stream_body()
    monkeypatch.setattr(random, "randrange", lambda stop: body["seed"])  # the seed of its long draft
    port = free_port()
    server = ServerProcess("--port", port, user_dirs=tmp_path / "serve")
    # near-uniform sampling over the whole vocabulary: a draft of hundreds of tokens, that rarely meets an eos; a
    # post limit it does not reach either (the composer ends a draft past the limit)
    config = Config(sampling=Sampling(temperature=body["temperature"], top_p=1.0, max_tokens=body["max_tokens"]),
                    postprocess=PostProcess(min_length=0), post_limit=100_000)
    app = remote_app(server.url, config)
    try:
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            screen = app.screen
            await wait_until(pilot, lambda: screen.state == "ready", timeout=30)
            await pilot.press(*body["messages"][0]["content"], "f5")
            await wait_until(pilot, lambda: len(screen.drafts.cards[0].text) > 20, timeout=30)
            server.kill()
            await wait_until(pilot, lambda: screen.job is None, timeout=30)
            await screen.saves_done.wait()
            (card,) = screen.drafts.cards
            assert card.finish_reason == "cancelled" and card.text.strip()
            errors = notes(app, "error")
            assert len(errors) == 1 and "went away mid-draft" in errors[0] and server.url in errors[0]
            (record,) = stored()
            assert record.finish_reason == "cancelled" and record.text == card.text
            server = ServerProcess("--port", port, user_dirs=tmp_path / "serve")  # back, at the same address
            screen.config.sampling.max_tokens = 16
            await generate(pilot)
            assert screen.drafts.cards[0].finish_reason in ("stop", "length")
            assert len(stored()) == 2
    finally:
        server.kill()


@run_async
async def test_a_wrong_server_url_is_a_message_in_the_app(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    app = remote_app(url)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await wait_until(pilot, lambda: app.screen.state == "failed", timeout=30)
        (error,) = notes(app, "error")
        assert error == f"{url}: cannot connect: nothing listens there (start it with `bobby-tui serve`)"


@run_async
async def test_compare_adapters_on_a_server_drafts_base_and_its_adapter_each_as_its_single_draft(tmp_path, monkeypatch):
    monkeypatch.setattr(random, "randrange", lambda stop: 4321)  # the comparison's seed and the single drafts'
    folder = tmp_path / "adapters"
    write_adapter(folder / "v1", DEMO_MODEL_DIR)  # ours, not the server's: the server compares its own adapter only
    server = ServerProcess(user_dirs=tmp_path / "serve")
    try:
        app = remote_app(server.url, Config(sampling=Sampling(max_tokens=32), postprocess=PostProcess(min_length=0),
                                            adapters_dir=folder))
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            screen = app.screen
            await wait_until(pilot, lambda: screen.state == "ready", timeout=30)
            await pilot.press(*PROMPT)
            cards = await generate_new(pilot, "ctrl+g")
            assert [card.adapter for card in cards] == ["base", "adapter adapter"]
            assert {card.seed for card in cards} == {4321}
            base, tuned = (card.text for card in cards)
            assert base.strip() and tuned.strip() and base != tuned
            assert notes(app, "warning") == []
            await generate(pilot)  # the server's adapter is on
            assert screen.drafts.cards[0].text == tuned
            await pilot.press("ctrl+t")
            await wait_until(pilot, lambda: not screen.adapter_enabled)
            await generate(pilot)
            assert screen.drafts.cards[0].text == base
        rows = stored()  # newest first
        assert [(r.adapter, r.text) for r in rows[:2]] == [(None, base), ("adapter", tuned)]
        assert sorted((r.adapter or "", r.text) for r in rows[2:]) == [("", base), ("adapter", tuned)]
    finally:
        server.kill()
