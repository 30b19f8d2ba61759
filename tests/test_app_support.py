"""Pilot helpers shared by the app tests (the fake engine is in fake_engine.py)."""

from __future__ import annotations

import asyncio
import functools
import time


def run_async(test):
    """Run an async test function with asyncio (the suite has no async pytest plugin)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


async def wait_until(pilot, condition, timeout: float = 120.0) -> None:
    """Let the app run until `condition()` holds; fail after `timeout` seconds (a deadline, not a timing)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting after {timeout}s"
        await pilot.pause(0.02)


async def generate(pilot, key: str = "f5") -> None:
    """Press `key` and let the generation it starts run to the end: all drafts redrawn and saved."""
    await pilot.press(key)
    await _finish(pilot)


async def generate_new(pilot, key: str) -> list:
    """Press `key`, wait for the new drafts it brings (a comparison of adapters shows them once the engine has its
    adapters) and let them run to the end; -> their cards."""
    screen = pilot.app.screen
    before = list(screen.drafts.cards)  # held, so that no new card can take an old one's place
    await pilot.press(key)
    await wait_until(pilot, lambda: screen.drafts.cards and all(screen.drafts.cards[0] is not c for c in before))
    await _finish(pilot)
    return screen.drafts.cards


async def _finish(pilot) -> None:
    screen = pilot.app.screen
    await wait_until(pilot, lambda: screen.job is None and all(card.finish_reason for card in screen.drafts.cards))
    await screen.saves_done.wait()
    await screen.workers.wait_for_complete()
    await pilot.pause()
    screen.drafts.flush()
    await pilot.pause()


def notes(app, severity: str | None = None) -> list[str]:
    """The messages of the app's notifications (of one severity)."""
    return [n.message for n in app._notifications if severity is None or n.severity == severity]
