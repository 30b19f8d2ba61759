"""`bobby-tui web` without a browser: the bind rule it shares with serve, and the page's key on a keyed bind."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from cli_helpers import run_cli
from server_helpers import ServerProcess
from web_helpers import running_web

from bobby_tui.web import KEY_COOKIE


def test_a_bind_other_machines_can_reach_needs_an_api_key():
    result = run_cli("web", "--host", "0.0.0.0", check_one_line_error=True)
    assert result.returncode == 2 and "--api-key" in result.stderr


def test_with_a_key_the_page_wants_it_once_and_keeps_it_in_a_cookie(tmp_path):
    server = ServerProcess(user_dirs=tmp_path)  # already running: web uses it and starts none
    try:
        with running_web(tmp_path / "web.log", server.url, api_key="s3cret") as web:
            try:
                urllib.request.urlopen(web.page_url, timeout=5)
                raise AssertionError("the page answered without the key")
            except urllib.error.HTTPError as err:
                assert err.code == 401 and b"?key=KEY" in err.read()
            with urllib.request.urlopen(web.page_url + "?key=s3cret", timeout=5) as response:
                assert response.status == 200 and f"{KEY_COOKIE}=s3cret" in response.headers["Set-Cookie"]
            request = urllib.request.Request(web.page_url + "static/js/textual.js",
                                             headers={"Cookie": f"{KEY_COOKIE}=s3cret"})
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status == 200
            web.stop()
        started = time.monotonic()
        assert server.health()["status"] == "ok"  # web leaves a server it did not start running
        assert time.monotonic() - started < 5
    finally:
        server.kill()
