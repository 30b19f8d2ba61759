"""`bobby-tui web` in a subprocess for the web tests (no browser needed): free loopback ports, its log, and stopping
it with everything it started, the server and the tabs' composers too, however the test ends."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cli_helpers import REPO

from bobby_tui.engines import API_KEY_ENV

START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 20


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


@dataclass
class WebProcess:
    process: subprocess.Popen
    page_url: str
    server_url: str
    log: Path  # web's stderr, where a server it started writes its request log too

    def log_lines(self, part: str) -> list[str]:
        return [line for line in self.log.read_text(errors="replace").splitlines() if part in line]

    def stop(self) -> int:
        """SIGTERM, as a user's ctrl+c or a service manager ends it; -> its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(STOP_TIMEOUT_S)

    def kill_all(self) -> None:
        """SIGKILL for its process group (its own: the server it started and the tabs' composers are in it)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:  # all gone already
            pass
        self.process.wait(10)


@contextmanager
def running_web(log: Path, server_url: str, api_key: str | None = None) -> Iterator[WebProcess]:
    """`bobby-tui web --server server_url` on a free port, its page answering; with `api_key` in the environment
    (the page then wants ?key=). Whatever is still running of it when the block ends is killed."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(API_KEY_ENV, None)
    if api_key is not None:
        env[API_KEY_ENV] = api_key
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "bobby_tui", "web", "--port", str(port), "--server", server_url],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_file,
            start_new_session=True,
        )
    web = WebProcess(process, f"http://127.0.0.1:{port}/", server_url, log)
    try:
        first_page = web.page_url + (f"?key={api_key}" if api_key else "")
        wait_for(lambda: page_answers(first_page) or process.poll() is not None, START_TIMEOUT_S, "the page")
        assert process.poll() is None, f"bobby-tui web exited with {process.returncode}: {log.read_text()[-2000:]}"
        yield web
    finally:
        web.kill_all()
