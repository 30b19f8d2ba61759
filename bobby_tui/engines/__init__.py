"""Where the composer's engine runs: in this process (the engine thread loads the model) or on `bobby-tui serve`.

Both sides have the part of the ``inference.Engine`` interface that the composer (``bobby_tui.composer.compose``),
its service and `bobby-tui post` drive: ``render_prompt``, ``generate`` (a batch of drafts, each with its own
sampling and seed, cancelled through ``should_cancel``), ``warmup``, ``tokenizer.special_tokens``, ``model_name``,
``adapter_name``, ``has_adapter`` and the ``adapter_enabled`` switch. ``EngineChoice`` says which one a front end
uses and gives the loader the service calls on its engine thread.
"""

from __future__ import annotations

import http.client
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from inference.errors import InferenceError

DEFAULT_SERVER = "http://127.0.0.1:8765"  # `bobby-tui serve`'s default address
AUTO = "auto"  # the config value / flag: a server answering on DEFAULT_SERVER, else in-process
API_KEY_ENV = "BOBBY_TUI_API_KEY"  # a client sends it as its bearer token, as `serve --api-key` takes it by default
PROBE_TIMEOUT_S = 0.3  # "auto" asks /health once, this long at most: a loopback server answers in milliseconds
LOCAL = "local"  # what the status bar shows for the in-process engine


class RemoteError(InferenceError):
    """The server cannot be reached, refused a request, or went away: one line naming the server's URL."""

    def __init__(self, url: str, problem: str):
        super().__init__(None, problem)
        self.url = url
        self.args = (f"{url}: {self.problem}",)  # a URL, not a path: "http://" keeps both slashes

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class EngineChoice:
    """The engine a front end uses: ``server`` None runs it in this process."""

    server: str | None = None
    api_key: str | None = None

    @property
    def location(self) -> str:
        return self.server or LOCAL

    def loader(self) -> Callable[[Path, Path | None, Callable[[Any], None]], Any]:
        """The service's loader: (model_dir, adapter_dir, progress) -> engine, called on the engine thread."""
        if self.server is None:
            from bobby_tui.service import load_engine

            return load_engine
        server, api_key = self.server, self.api_key

        def connect(model_dir: Path, adapter_dir: Path | None, progress: Callable[[Any], None]) -> Any:
            from bobby_tui.engines.remote import RemoteEngine

            return RemoteEngine(server, api_key)

        return connect


def check_url(url: str, source: str) -> str:
    """`url` as an http(s)://host[:port] base URL without a trailing slash; ValueError with one line otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"{source} must be an http://HOST:PORT URL or \"{AUTO}\" (got {url!r})")
    try:
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        raise ValueError(f"{source}: {url!r} has a port that is not a number") from None
    return url.rstrip("/")


def server_answers(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a bobby-tui server answers GET /health at `url` within `timeout` seconds."""
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = connection_class(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def choose_engine(flag: str | None, configured: str, source: str) -> EngineChoice:
    """The engine from --server (`flag`) or else the config's `server` key (`configured`, "" for in-process);
    "auto" probes DEFAULT_SERVER once. ValueError (one line, naming `source` for the config) for a bad URL."""
    value, where = (flag, "--server") if flag is not None else (configured, source)
    api_key = os.environ.get(API_KEY_ENV) or None
    if not value or value == LOCAL:
        return EngineChoice()
    if value == AUTO:
        return EngineChoice(DEFAULT_SERVER, api_key) if server_answers(DEFAULT_SERVER) else EngineChoice()
    return EngineChoice(check_url(value, where), api_key)
