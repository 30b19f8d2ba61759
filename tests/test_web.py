"""`bobby-tui web` in a real browser: headless Chromium (Debian's) through Playwright opens the page, types a prompt,
presses F5, and the draft lands in the history; the server that `web` started stops with it.

textual-serve draws the terminal on a canvas (no DOM text), so the test reads the draft from the history database
and takes a screenshot. Runs where /usr/bin/chromium and Playwright are installed; skipped elsewhere.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cli_helpers import REPO

from bobby_tui.engines import server_answers
from bobby_tui.paths import db_path
from bobby_tui.storage import Store, StoreError

CHROMIUM = Path("/usr/bin/chromium")
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROMPT = "Write a post about the sea"
START_TIMEOUT_S = 90
DRAFT_TIMEOUT_S = 90
SCREENSHOT_ENV = "BOBBY_TUI_WEB_SCREENSHOT"  # where to keep the screenshot (the README's is made so)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)


def page_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def drafts_of(prompt: str) -> list:
    try:
        with Store(db_path()) as store:
            return [r for r in store.history() if r.prompt == prompt]
    except StoreError:  # not created yet
        return []


def test_the_composer_in_a_browser_drafts_into_the_history_on_the_server_web_started(tmp_path):
    config = Path(os.environ["XDG_CONFIG_HOME"]) / "bobby-tui" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[sampling]\nmax_tokens = 48\n[postprocess]\nmin_length = 0\n")
    web_port, server_url = free_port(), f"http://127.0.0.1:{free_port()}"
    page_url = f"http://127.0.0.1:{web_port}/"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("BOBBY_TUI_API_KEY", None)
    web = subprocess.Popen([sys.executable, "-m", "bobby_tui", "web", "--port", str(web_port), "--server", server_url],
                           cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: page_answers(page_url) or web.poll() is not None, START_TIMEOUT_S, "the page")
        assert web.poll() is None, f"bobby-tui web exited with {web.returncode}"
        assert server_answers(server_url)  # web started the server the tabs share
        with playwright.sync_playwright() as driver:
            context = driver.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                headless=True, viewport={"width": 1280, "height": 800}, timeout=30_000,
            )
            try:
                page = context.pages[0] if context.pages else context.new_page()
                page.set_default_timeout(30_000)
                page.goto(page_url)
                page.wait_for_selector("canvas")
                time.sleep(3)  # the composer process starts and draws its first screen
                page.mouse.click(640, 50)  # focus for the terminal, on the prompt editor at the top
                page.keyboard.type(PROMPT, delay=20)
                page.keyboard.press("F5")
                wait_for(lambda: drafts_of(PROMPT), DRAFT_TIMEOUT_S, "the draft in the history")
                time.sleep(1)  # the finished draft drawn
                shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "web.png")
                page.screenshot(path=str(shot))
                assert shot.stat().st_size > 10_000
            finally:
                context.close()
        (record,) = drafts_of(PROMPT)
        assert record.text.strip() and record.model == "model" and record.generated_tokens > 0
    finally:
        web.send_signal(signal.SIGTERM)
        try:
            web.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(web.pid, signal.SIGKILL)
            web.wait(10)
    assert not server_answers(server_url)  # the server web started stopped with it
