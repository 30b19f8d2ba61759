"""`bobby-tui serve` in a subprocess on a free loopback port, for the server tests (traffic to 127.0.0.1 only)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60


class ServerProcess:
    """`python -m bobby_tui serve --port 0 ARGS`; its stderr is collected line by line in `lines`."""

    def __init__(self, *args: object, user_dirs: Path, api_key_env: str | None = None):
        env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CONFIG_HOME": str(user_dirs / "config"),
               "XDG_DATA_HOME": str(user_dirs / "data"), "XDG_CACHE_HOME": str(user_dirs / "cache")}
        env.pop("BOBBY_TUI_API_KEY", None)
        if api_key_env is not None:
            env["BOBBY_TUI_API_KEY"] = api_key_env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bobby_tui", "serve", "--port", "0", *map(str, args)],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.port = 0
        threading.Thread(target=self._read, daemon=True).start()
        if not self._listening.wait(START_TIMEOUT_S):
            self.kill()
            raise AssertionError(f"the server did not start: {self.lines}")

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                self._listening.set()
        self._listening.set()  # exited: the waiter sees port 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: object = None, headers: dict | None = None,
                raw: bytes | None = None, timeout: float = 30) -> tuple[int, dict, dict | str]:
        """-> (status, headers, JSON body or text)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        text = response.read().decode()
        conn.close()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
        return response.status, dict(response.headers), parsed

    def open_stream(self, body: dict, headers: dict | None = None) -> tuple[http.client.HTTPConnection, object]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("POST", "/v1/chat/completions", body=json.dumps({**body, "stream": True}).encode(),
                     headers={"Content-Type": "application/json", **(headers or {})})
        return conn, conn.getresponse()

    def health(self) -> dict:
        return self.request("GET", "/health")[2]

    def wait_for(self, predicate, timeout: float = 5.0, what: str = "condition") -> float:
        """Poll until predicate() is true; -> seconds it took."""
        started = time.monotonic()
        while not predicate():
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{what}: not within {timeout} s; log: {self.lines[-5:]}")
            time.sleep(0.02)
        return time.monotonic() - started

    def terminate(self, timeout: float = 10) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def sse_events(response) -> list:
    """The `data:` payloads of a server-sent event stream, JSON-decoded ("[DONE]" kept as a string)."""
    events = []
    for line in response:
        line = line.decode().strip()
        if line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def long_stream_body(max_tokens: int = 1500) -> dict:
    """A chat request that runs for hundreds of tokens on the demo model: near-uniform sampling (temperature 5)
    rarely hits one of its eos ids among 8192 tokens, and this seed does not within 1500 tokens."""
    return {"model": "demo", "messages": [{"role": "user", "content": "Write a post about the sea."}],
            "temperature": 5.0, "seed": 3, "max_tokens": max_tokens}
