"""`bobby-tui web` in a real browser: headless Chromium (Debian's) through Playwright opens the page, types a prompt,
presses F5, and the draft lands in the history; the server that `web` started stops with it.

textual-serve draws the terminal on a canvas (no DOM text), so the test reads the draft from the history database
and takes a screenshot. Runs where /usr/bin/chromium and Playwright are installed; skipped elsewhere.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from web_helpers import WebProcess, free_port, running_web, wait_for

from bobby_tui.engines import server_answers
from bobby_tui.paths import db_path
from bobby_tui.server.protocol import EXTENSION
from bobby_tui.storage import GenerationRecord, Store, StoreError

CHROMIUM = Path("/usr/bin/chromium")
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROMPT = "Write a post about the sea"
COMPOSER_TIMEOUT_S = 90  # a tab's composer process starts and connects to the server
DRAFT_TIMEOUT_S = 90
BROWSER_TIMEOUT_MS = 30_000
SCREENSHOT_ENV = "BOBBY_TUI_WEB_SCREENSHOT"  # where to keep the screenshot (the README's is made so)
CONNECT_LOG = f"GET /{EXTENSION}/v1/info 200"  # each composer asks once, when it connects to the server


def history() -> list[GenerationRecord]:
    try:
        with Store(db_path()) as store:
            return store.history(limit=-1)
    except StoreError:  # not created yet
        return []


def drafts_of(prompt: str) -> list[GenerationRecord]:
    return [r for r in history() if r.prompt == prompt]


@contextmanager
def web_composer(tmp_path: Path) -> Iterator[WebProcess]:
    """`bobby-tui web` with short drafts, starting its own server (none runs at the URL it is given)."""
    config = Path(os.environ["XDG_CONFIG_HOME"]) / "bobby-tui" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[sampling]\nmax_tokens = 48\n[postprocess]\nmin_length = 0\n")
    with running_web(tmp_path / "web.log", f"http://127.0.0.1:{free_port()}") as web:
        assert server_answers(web.server_url)  # web started the server the tabs share
        yield web


@contextmanager
def chromium(tmp_path: Path) -> Iterator[object]:
    """Headless Chromium with its own profile; -> its browser context (one window, a page per tab)."""
    with playwright.sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
            headless=True, viewport={"width": 1280, "height": 800}, timeout=BROWSER_TIMEOUT_MS,
        )
        try:
            yield context
        finally:
            context.close()


def open_composer(context, web: WebProcess) -> object:
    """A new tab on the web composer, returned once its composer process is up and connected to the server."""
    connected = len(web.log_lines(CONNECT_LOG))
    page = context.new_page()
    page.set_default_timeout(BROWSER_TIMEOUT_MS)
    page.goto(web.page_url)
    page.wait_for_selector("canvas")
    wait_for(lambda: len(web.log_lines(CONNECT_LOG)) > connected, COMPOSER_TIMEOUT_S, "the tab's composer")
    page.mouse.click(640, 50)  # focus for the terminal, on the prompt editor at the top
    return page


def test_the_composer_in_a_browser_drafts_into_the_history_on_the_server_web_started(tmp_path):
    with web_composer(tmp_path) as web:
        with chromium(tmp_path) as browser:
            page = open_composer(browser, web)
            page.keyboard.type(PROMPT, delay=20)
            page.keyboard.press("F5")
            wait_for(lambda: drafts_of(PROMPT), DRAFT_TIMEOUT_S, "the draft in the history")
            time.sleep(1)  # the finished draft drawn
            shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "web.png")
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
        assert web.stop() == 0  # a clean exit on SIGTERM
        assert not server_answers(web.server_url)  # the server web started stopped with it
    (record,) = drafts_of(PROMPT)
    assert record.text.strip() and record.model == "model" and record.generated_tokens > 0

