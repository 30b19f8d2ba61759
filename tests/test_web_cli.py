"""`bobby-tui web` without a browser: the bind rule it shares with serve, and the page's key on a keyed bind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from cli_helpers import REPO, run_cli
from server_helpers import ServerProcess
from test_web import free_port, page_answers, wait_for

from bobby_tui.web import KEY_COOKIE


def test_a_bind_other_machines_can_reach_needs_an_api_key():
    result = run_cli("web", "--host", "0.0.0.0", check_one_line_error=True)
    assert result.returncode == 2 and "--api-key" in result.stderr


def test_with_a_key_the_page_wants_it_once_and_keeps_it_in_a_cookie(tmp_path):
    server = ServerProcess(user_dirs=tmp_path)  # already running: web uses it and starts none
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "BOBBY_TUI_API_KEY": "s3cret"}
    web = subprocess.Popen([sys.executable, "-m", "bobby_tui", "web", "--port", str(port), "--server", server.url],
                           cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/"
        wait_for(lambda: page_answers(base + "?key=s3cret") or web.poll() is not None, 60, "the page")
        try:
            urllib.request.urlopen(base, timeout=5)
            raise AssertionError("the page answered without the key")
        except urllib.error.HTTPError as err:
            assert err.code == 401 and b"?key=KEY" in err.read()
        with urllib.request.urlopen(base + "?key=s3cret", timeout=5) as response:
            assert response.status == 200 and f"{KEY_COOKIE}=s3cret" in response.headers["Set-Cookie"]
        request = urllib.request.Request(base + "static/js/textual.js", headers={"Cookie": f"{KEY_COOKIE}=s3cret"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
    finally:
        web.send_signal(signal.SIGTERM)
        web.wait(20)
        started = time.monotonic()
        assert server.health()["status"] == "ok"  # web leaves a server it did not start running
        assert time.monotonic() - started < 5
        server.kill()
