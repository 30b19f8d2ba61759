"""`bobby-tui web` in a real browser: headless Chromium (Debian's) through Playwright opens the page, types a prompt,
presses F5, and the draft lands in the history; two tabs draft at once on the one server that `web` started, which
stops with it.

textual-serve draws the terminal on a canvas (no DOM text), so the test reads the drafts from the history database
and the server's request log, and takes a screenshot. Runs where /usr/bin/chromium and Playwright are installed;
skipped elsewhere.
"""

from __future__ import annotations

import os
import re
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
# one streamed request per draft; the server logs its prompt+completion tokens
COMPLETION_LOG = re.compile(r"POST /v1/completions 200 tokens=(\d+)\+(\d+) ")


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


def test_two_tabs_draft_at_once_on_the_one_server_and_each_keeps_its_row_once(tmp_path):
    prompts = ["Write a post about the sea", "Write a post about the mountains"]
    with web_composer(tmp_path) as web:
        with chromium(tmp_path) as browser:
            pages = [open_composer(browser, web) for _ in prompts]
            for page, prompt in zip(pages, prompts, strict=True):
                page.keyboard.type(prompt, delay=20)
            for page in pages:  # both drafts asked for at once
                page.keyboard.press("F5")
            wait_for(lambda: all(drafts_of(p) for p in prompts), DRAFT_TIMEOUT_S, "both drafts in the history")
        assert web.stop() == 0  # every tab's composer quits with it: a draft saved twice on the way out shows below
        assert not server_answers(web.server_url)
    rows = history()
    assert sorted(r.prompt for r in rows) == sorted(prompts)  # one row per tab, each with its own tab's prompt
    assert all(r.text.strip() and r.model == "model" for r in rows)
    # both composers drafted on the one server, which loaded the model: it served both drafts (a tab with an
    # in-process engine would send it nothing), and its two completions are the two rows
    assert len(web.log_lines("listening on http://127.0.0.1:")) == 1
    assert len(web.log_lines(CONNECT_LOG)) == len(prompts)
    served = [tuple(map(int, m.groups())) for line in web.log_lines("POST /v1/completions")
              if (m := COMPLETION_LOG.search(line))]
    assert sorted(served) == sorted((r.prompt_tokens, r.generated_tokens) for r in rows)
