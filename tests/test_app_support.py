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
    screen = pilot.app.screen
    await pilot.press(key)
    await wait_until(pilot, lambda: screen.job is None and all(card.finish_reason for card in screen.drafts.cards))
    await screen.saves_done.wait()
    await screen.workers.wait_for_complete()
    await pilot.pause()
    screen.drafts.flush()
    await pilot.pause()


def notes(app, severity: str | None = None) -> list[str]:
    """The messages of the app's notifications (of one severity)."""
    return [n.message for n in app._notifications if severity is None or n.severity == severity]
