"""`bobby-tui serve`'s safety and lifecycle: the bind rule, the API key, the queue cap, SIGTERM."""

from __future__ import annotations

import json
import threading
import time

import openai
import pytest
from cli_helpers import run_cli
from server_helpers import ServerProcess, long_stream_body

from bobby_tui.server import bind_problem


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.com"])
def test_a_non_loopback_bind_without_a_key_is_refused_before_loading(host, monkeypatch):
    monkeypatch.delenv("BOBBY_TUI_API_KEY", raising=False)  # a key from the environment would allow the bind
    started = time.monotonic()
    result = run_cli("serve", "--host", host, "--port", 0, check_one_line_error=True, timeout=30)
    assert result.returncode == 2
    assert "--api-key" in result.stderr and host in result.stderr
    assert time.monotonic() - started < 10  # refused at once: no model load, no socket


def test_the_http_side_does_not_import_mlx():
    import subprocess
    import sys

    from cli_helpers import REPO

    code = "import sys, bobby_tui.cli, bobby_tui.server; print([m for m in sys.modules if m.split('.')[0] == 'mlx'])"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr  # MLX belongs to the engine thread


def test_the_bind_rule():
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert bind_problem(host, None) is None
    for host in ("0.0.0.0", "10.0.0.1", "::", "my-laptop.local"):
        assert bind_problem(host, None) is not None
        assert bind_problem(host, "a-key") is None


@pytest.mark.parametrize("given_by", ["flag", "environment"])
def test_with_a_key_every_api_request_needs_the_bearer(tmp_path, given_by):
    if given_by == "flag":
        server = ServerProcess("--api-key", "s3cret", user_dirs=tmp_path)
    else:
        server = ServerProcess(user_dirs=tmp_path, api_key_env="s3cret")
    try:
        body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                        {"Authorization": "Basic s3cret"}):
            for method, path, data in (("POST", "/v1/chat/completions", body), ("GET", "/v1/models", None)):
                status, response_headers, error = server.request(method, path, data, headers=headers)
                assert status == 401, (headers, error)
                assert error["error"]["code"] == "invalid_api_key"
                assert response_headers["WWW-Authenticate"] == "Bearer"
        assert server.health()["status"] == "ok"  # health stays open: it tells nothing but that we are up
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret", max_retries=0, timeout=60)
        reply = client.chat.completions.create(**body)
        assert reply.choices[0].message.content
    finally:
        assert server.terminate() == 0


def test_a_full_queue_answers_429_with_retry_after(tmp_path):
    server = ServerProcess("--max-rows", 1, "--max-queue", 1, user_dirs=tmp_path)
    try:
        running_conn, running = server.open_stream(long_stream_body())
        running.readline()
        server.wait_for(lambda: server.health()["active_rows"] == 1, what="the first request's row")
        waiting_conn, _ = server.open_stream(long_stream_body())
        server.wait_for(lambda: server.health()["waiting"] == 1, what="the second request to wait")
        status, headers, error = server.request("POST", "/v1/chat/completions", long_stream_body(4))
        assert status == 429 and headers["Retry-After"] == "1"
        assert error["error"]["type"] == "rate_limit_error" and error["error"]["code"] == "queue_full"
        running_conn.close()  # its row frees; the waiting request gets it
        server.wait_for(lambda: server.health()["waiting"] == 0, what="the waiting request to join")
        waiting_conn.close()
        server.wait_for(lambda: server.health()["active_rows"] == 0, what="every row to be freed")
        status, _, reply = server.request("POST", "/v1/chat/completions", long_stream_body(4))
        assert status == 200 and reply["usage"]["completion_tokens"] == 4
    finally:
        assert server.terminate() == 0


def test_sigterm_ends_streams_with_an_error_event_and_exits_cleanly(tmp_path):
    server = ServerProcess(user_dirs=tmp_path)
    events: list = []
    conn, response = server.open_stream(long_stream_body(), headers={})
    response.readline()  # the stream is running

    def read() -> None:
        for line in response:
            line = line.decode().strip()
            if line.startswith("data: "):
                events.append(line[6:])

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.2)
    started = time.monotonic()
    assert server.terminate(timeout=10) == 0
    exit_s = time.monotonic() - started
    reader.join(10)
    assert exit_s < 5
    assert events and events[-1] != "[DONE]"
    last = json.loads(events[-1])
    assert last["error"]["code"] == "server_shutting_down" and last["error"]["type"] == "server_error"
    assert any("shutting down" in line for line in server.lines)
    assert not any("Traceback" in line or "terminate called" in line for line in server.lines)
    with pytest.raises(OSError):
        server.health()  # no longer listening
    conn.close()


@pytest.mark.parametrize("compiles", [False, True], ids=["cpu", "gpu"])
def test_where_batch_sizes_compile_the_server_warms_every_one_before_listening(tiny_models, monkeypatch, compiles):
    """On a GPU each batch size compiles: the engine thread runs every size a client's rows may make (one prompt's
    drafts and left-padded requests) before the server answers, so no client's first token waits for it."""
    import asyncio

    from bobby_tui.server.worker import EngineWorker, batch_generator
    from inference import Engine

    warmed = []

    def load():
        engine = Engine.load(tiny_models["q4-g64-tied"][0])
        monkeypatch.setattr(Engine, "compiles_per_batch_size", property(lambda self: compiles))
        original = engine.warmup
        monkeypatch.setattr(engine, "warmup", lambda sizes=(1,), own_prompts=False: (
            warmed.append((tuple(sizes), own_prompts)), original(sizes, own_prompts)))
        return engine

    worker = EngineWorker(load, batch_generator, max_rows=4, log=print)
    loop = asyncio.new_event_loop()
    try:
        worker.start(loop)
    finally:
        worker.stop()
        loop.close()
    expected = [((1,), False)] + ([((2, 3, 4), False), ((2, 3, 4), True)] if compiles else [])
    assert warmed == expected


@pytest.mark.parametrize(("quiet_s", "first_step_requests"), [(1.0, 3), (0.0, 1)], ids=["window", "no-window"])
def test_an_idle_engine_takes_requests_arriving_together_into_its_first_step(tiny_models, quiet_s,
                                                                             first_step_requests):
    """Clients arriving together prefill in one pass: an idle engine that gets a request waits for the ones that
    come right after it (here 0.25 s apart, within a 1 s quiet window) before its first step."""
    import asyncio

    from bobby_tui.server.protocol import ServerLimits, parse_chat
    from bobby_tui.server.worker import EngineWorker, Job
    from inference import BatchGenerator, Engine

    given_at_step: list[int] = []  # at each step: how many requests the batch had been given

    class RecordingBatch:
        def __init__(self, engine, max_rows):
            self.batch, self.given = BatchGenerator(engine, max_rows), 0

        def submit(self, request):
            self.given += 1
            return self.batch.submit(request)

        def step(self):
            given_at_step.append(self.given)
            return self.batch.step()

        def __getattr__(self, name):  # has_work, active_rows, cancel
            return getattr(self.batch, name)

    worker = EngineWorker(lambda: Engine.load(tiny_models["q4-g64-tied"][0]), RecordingBatch, max_rows=4, log=print,
                          arrival_quiet_s=quiet_s, arrival_wait_s=5.0)
    loop = asyncio.new_event_loop()
    try:
        worker.start(loop)
        for i in range(3):
            body = {"model": "any", "messages": [{"role": "user", "content": f"post {i}"}], "max_tokens": 4}
            worker.submit(Job(parse_chat(body, ServerLimits(), None)))
            time.sleep(0.25)
        deadline = time.monotonic() + 30
        while not given_at_step and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
        loop.close()
    assert given_at_step[0] == first_step_requests
