"""`bobby-tui web`: the composer in a browser, through textual-serve, every tab on one `bobby-tui serve`.

textual-serve runs one composer process per browser tab (each its own Textual app, drawn by xterm.js in the page);
each of them is started with ``--server URL``, so the model is loaded once, by the server, whatever the number of
tabs. When no server answers at that URL (a loopback one), this command starts `bobby-tui serve` itself and stops it
when it exits. A bind other than loopback needs an API key, as `serve` does: the page then asks for ``?key=KEY``
once and keeps it in a cookie.
"""

from __future__ import annotations

import hmac
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from bobby_tui.engines import server_answers

SERVER_START_TIMEOUT_S = 300  # a big model loads for a while; the server's own log says how far it is
KEY_COOKIE = "bobby_tui_key"


class WebError(Exception):
    """The web composer cannot start: one line for the user."""


def is_loopback_url(url: str) -> bool:
    from bobby_tui.server.app import is_loopback

    return is_loopback(urlsplit(url).hostname or "")


def start_server(url: str, model_args: list[str], log: Callable[[str], None]) -> subprocess.Popen:
    """`bobby-tui serve` on `url`'s port, waited for until it answers; WebError when it exits first or is slow."""
    parts = urlsplit(url)
    command = [sys.executable, "-m", "bobby_tui", "serve", "--host", parts.hostname, "--port", str(parts.port or 80),
               *model_args]
    log(f"no server answers at {url}: starting `bobby-tui serve` (stopped when this exits)")
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)  # its log lines go to our stderr
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server_answers(url):
        if process.poll() is not None:
            raise WebError(f"`bobby-tui serve` exited with code {process.returncode} (its message is above)")
        if time.monotonic() > deadline:
            stop_server(process)
            raise WebError(f"`bobby-tui serve` did not answer at {url} within {SERVER_START_TIMEOUT_S} s")
        time.sleep(0.2)
    return process


def stop_server(process: subprocess.Popen, timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()  # SIGTERM: the server ends its streams and exits within a few seconds
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


def composer_command(server_url: str) -> str:
    """The shell command textual-serve runs for each tab: the composer on the server."""
    return shlex.join([sys.executable, "-m", "bobby_tui", "--server", server_url])


def serve_web(host: str, port: int, server_url: str, api_key: str | None) -> None:
    """Serve the composer at http://host:port until SIGTERM / ctrl+c."""
    from aiohttp import web
    from textual_serve.server import Server

    class ComposerWebServer(Server):
        async def _make_app(self) -> web.Application:
            app = await super()._make_app()
            if api_key:
                app.middlewares.append(_key_middleware(api_key))
            return app

    ComposerWebServer(composer_command(server_url), host=host, port=port, title="bobby-tui").serve()


def _key_middleware(api_key: str):
    from aiohttp import web

    expected = api_key.encode()

    @web.middleware
    async def require_key(request: web.Request, handler):
        given = request.query.get("key") or request.cookies.get(KEY_COOKIE) or ""
        if not hmac.compare_digest(given.encode(), expected):
            return web.Response(status=401, text="open this page with ?key=KEY (the key bobby-tui web was given)\n")
        response = await handler(request)
        if "key" in request.query:  # remembered for the page's websocket and static files
            response.set_cookie(KEY_COOKIE, given, httponly=True, samesite="Strict")
        return response

    return require_key

