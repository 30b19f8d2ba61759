"""The composer's engine on `bobby-tui serve` (bobby_tui.engines.remote): the same drafts as in-process, spreads in
one batch, cancel, the adapter switch, the CLI on a server, history from two clients, and the server going away."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from cli_helpers import REPO, demo_dirs, run_cli
from server_helpers import ServerProcess

from bobby_tui.composer import Draft, compose
from bobby_tui.config import PostProcess
from bobby_tui.engines import AUTO, EngineChoice, RemoteError, choose_engine
from bobby_tui.engines.remote import RemoteEngine
from bobby_tui.paths import db_path
from bobby_tui.storage import Store
from inference.api import DraftDone, GenerationRequest, SamplingParams, TokenDelta

PROMPT = "Write a post about the sea."
SPREAD = [0.7, 0.95, 1.2]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(user_dirs=tmp_path_factory.mktemp("serve-user"))
    yield process
    process.kill()


def drafts_of(engine, seeds=(11, 12, 13), adapter=True, max_tokens=40) -> list[Draft]:
    engine.adapter_enabled = adapter and engine.has_adapter
    params = [SamplingParams(temperature=t, seed=s) for t, s in zip(SPREAD, seeds, strict=True)]
    events = compose(engine, PROMPT, None, params, max_tokens, PostProcess(), 300, raw=True)
    return sorted((e for e in events if isinstance(e, Draft)), key=lambda d: d.draft)


def post_json(*args) -> list[dict]:
    result = run_cli("post", "--json", "--no-history", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_a_spread_on_the_server_equals_the_one_in_process_and_decodes_as_one_batch(server):
    from inference import Engine

    engine = RemoteEngine(server.url)
    assert (engine.model_name, engine.adapter_name, engine.adapter_enabled) == ("model", "adapter", True)
    assert "<|im_end|>" in engine.tokenizer.special_tokens
    remote = drafts_of(engine)
    assert server.health()["peak_rows"] >= 3  # the three requests shared the batch
    local = drafts_of(Engine.load(*demo_dirs()))  # the same spread (temperatures and seeds) in this process
    assert [(d.text, d.seed, d.finish_reason) for d in remote] == [(d.text, d.seed, d.finish_reason) for d in local]
    assert len({d.text for d in remote}) == 3
    assert [d.text for d in drafts_of(engine)] == [d.text for d in remote]  # rerun with the same seeds
    assert all(d.stats.prompt_tokens == local[0].stats.prompt_tokens and d.stats.generated_tokens > 0
               for d in remote)


def test_the_adapter_switch_reaches_the_server(server):
    engine = RemoteEngine(server.url)
    greedy = [SamplingParams(temperature=0.0)]
    texts = {}
    for adapter in (False, True):
        engine.adapter_enabled = adapter
        texts[adapter] = [e.text for e in compose(engine, PROMPT, None, greedy, 24, PostProcess(), 300, raw=True)
                          if isinstance(e, Draft)]
    off = post_json("--no-adapter", "--raw", "--max-tokens", 24, "--temperature", 0, PROMPT)
    on = post_json("--raw", "--max-tokens", 24, "--temperature", 0, PROMPT)
    assert (texts[False], texts[True]) == ([off[0]["text"]], [on[0]["text"]])
    assert texts[False] != texts[True]


def test_cancel_ends_every_draft_with_its_text_so_far_and_frees_the_rows(server):
    engine = RemoteEngine(server.url)
    request = GenerationRequest(engine.render_prompt(PROMPT), [SamplingParams(temperature=5.0, seed=s) for s in (2, 3)],
                                max_tokens=1500)
    deltas, cancel = {0: "", 1: ""}, threading.Event()
    done = []
    for event in engine.generate(request, should_cancel=cancel.is_set):
        if isinstance(event, TokenDelta):
            deltas[event.draft] += event.text
            if len(deltas[0]) > 20 and len(deltas[1]) > 20:
                cancel.set()
        else:
            done.append(event)
    assert sorted(d.draft for d in done) == [0, 1]
    assert all(d.finish_reason == "cancelled" and d.text == deltas[d.draft] for d in done)
    server.wait_for(lambda: server.health()["active_rows"] == 0, what="the rows freed")


def test_post_on_a_server_loads_no_model_and_prints_the_in_process_text(server):
    code = ("import sys; from bobby_tui.cli import main; rc = main(sys.argv[1:]); "
            "print('mlx loaded' if 'mlx.core' in sys.modules else 'no mlx', file=sys.stderr); sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code, "post", "--server", server.url, "--temperature", "0", "--raw",
                             "--no-history", PROMPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().endswith("no mlx")
    local = run_cli("post", "--temperature", "0", "--raw", "--no-history", PROMPT)
    assert result.stdout == local.stdout and result.stdout.strip()


def test_the_config_key_and_auto_choose_the_engine(server, tmp_path):
    assert choose_engine(None, "", "config") == EngineChoice()
    assert choose_engine(None, server.url + "/", "config").server == server.url
    assert choose_engine("local", server.url, "config") == EngineChoice()
    with pytest.raises(ValueError, match="config.*http://HOST:PORT"):
        choose_engine(None, "127.0.0.1:8765", "config")
    started = time.monotonic()
    choice = choose_engine(AUTO, "", "config")  # nothing on the default port in the tests: in-process, fast
    assert choice.server is None or choice.server.endswith(":8765")
    assert time.monotonic() - started < 2
    config = tmp_path / "xdg-config" / "bobby-tui" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'server = "{server.url}"\n')
    assert post_json("--temperature", 0, "--max-tokens", 8, "hi")[0]["model"] == "model"
    config.write_text('server = "nonsense"\n')
    result = run_cli("post", "hi", check_one_line_error=True)
    assert result.returncode == 1 and "server in" in result.stderr and "nonsense" in result.stderr


def test_two_clients_on_one_server_and_one_history_keep_every_row_once(server):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "bobby_tui", "post", "--server", server.url, "--json", "-n", "3",
               "--max-tokens", "20", PROMPT]
    clients = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    printed = []
    for client in clients:
        out, err = client.communicate(timeout=120)
        assert client.returncode == 0, err
        printed += [json.loads(line) for line in out.splitlines()]
    with Store(db_path()) as store:
        rows = store.history(limit=-1)
    assert len(printed) == 6
    assert sorted(r.id for r in rows) == sorted(p["id"] for p in printed)  # none lost, none twice
    assert {r.id: r.text for r in rows} == {p["id"]: p["text"] for p in printed}


def test_a_wrong_url_or_key_is_one_line_and_exit_1(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli("post", "--server", f"http://127.0.0.1:{port}", "hi", check_one_line_error=True)
    assert result.returncode == 1 and f"http://127.0.0.1:{port}: cannot connect" in result.stderr
    keyed = ServerProcess("--api-key", "s3cret", user_dirs=tmp_path)
    try:
        os.environ["BOBBY_TUI_API_KEY"] = "wrong"
        try:
            result = run_cli("post", "--server", keyed.url, "hi", check_one_line_error=True)
        finally:
            del os.environ["BOBBY_TUI_API_KEY"]
        assert result.returncode == 1 and "refused the API key" in result.stderr
        assert RemoteEngine(keyed.url, "s3cret").model_name == "model"
    finally:
        keyed.kill()


def test_the_server_going_away_mid_draft_keeps_the_text_and_a_new_one_is_used_again(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    first = ServerProcess("--port", port, user_dirs=tmp_path)
    try:
        engine = RemoteEngine(first.url)
        request = GenerationRequest(engine.render_prompt(PROMPT), [SamplingParams(temperature=5.0, seed=2)],
                                    max_tokens=1500)
        text, done = "", []
        with pytest.raises(RemoteError, match="went away mid-draft|shutting down"):
            for event in engine.generate(request):
                if isinstance(event, TokenDelta):
                    text += event.text
                    if len(text) > 20 and first.proc.poll() is None:
                        first.proc.kill()
                elif isinstance(event, DraftDone):
                    done.append(event)
        assert [(d.finish_reason, d.text) for d in done] == [("cancelled", text)]
        first.proc.wait(10)  # gone: its listening socket too
        with pytest.raises(RemoteError, match="cannot connect"):
            engine.render_prompt(PROMPT)
    finally:
        first.kill()
    second = ServerProcess("--port", port, user_dirs=tmp_path)
    try:  # the same engine object reconnects: every call opens its own connections
        request = GenerationRequest(engine.render_prompt(PROMPT), [SamplingParams(temperature=0.0)], max_tokens=8)
        assert [type(e) for e in engine.generate(request)][-1] is DraftDone
    finally:
        second.kill()


def test_the_render_extension_is_the_engines_template_and_checks_its_body(server):
    from inference import Engine

    engine = Engine.load(*demo_dirs())
    status, _, body = server.request("POST", "/bobby/v1/render", {"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]})
    assert status == 200 and body["prompt"] == engine.render_prompt(PROMPT, "Be brief.")
    assert body["prompt_tokens"] == len(engine.tokenizer.encode(body["prompt"]))
    for bad, param in (({"messages": []}, "messages"), ({"messages": [{"role": "robot", "content": "x"}]},
                                                        "messages[0].role"), ({"messages": [], "n": 2}, "n")):
        status, _, body = server.request("POST", "/bobby/v1/render", bad)
        assert status == 400 and body["error"]["param"] == param
    status, _, info = server.request("GET", "/bobby/v1/info")
    assert status == 200 and info["model"] == "model" and info["adapter_default"] is True
    assert set(info["special_tokens"]) == set(engine.tokenizer.special_tokens)


def test_a_conversation_with_a_prefill_drafts_as_in_process(server):
    from inference import Engine

    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! What shall we post?"}]
    greedy = [SamplingParams(temperature=0.0)]

    def draft(engine) -> str:
        events = compose(engine, PROMPT, "Be brief.", greedy, 16, PostProcess(), 300, raw=True, history=history,
                         prefill="Ahoy")
        return next(e.text for e in events if isinstance(e, Draft))

    local = Engine.load(*demo_dirs())
    remote = RemoteEngine(server.url)
    messages = [{"role": "system", "content": "Be brief."}, *history, {"role": "user", "content": PROMPT}]
    assert remote.render_messages(messages, prefill="Ahoy") == local.render_messages(messages, prefill="Ahoy")
    assert draft(remote) == draft(local) and draft(remote).startswith("Ahoy")
    status, _, body = server.request("POST", "/bobby/v1/render", {"messages": messages, "prefill": 3})
    assert status == 400 and body["error"]["param"] == "prefill"
