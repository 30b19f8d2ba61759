"""`bobby-tui serve` against the official openai client: same text as `post`, streams, n, adapter, concurrency."""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import openai
import pytest
from cli_helpers import run_cli
from server_helpers import ServerProcess, long_stream_body

PROMPT = "Write a post about the sea."
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(user_dirs=tmp_path_factory.mktemp("serve-user"))
    yield process
    process.terminate()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def chat(client, prompt: str = PROMPT, **options):
    options.setdefault("max_tokens", MAX_TOKENS)
    return client.chat.completions.create(model="demo", messages=[{"role": "user", "content": prompt}], **options)


def streamed_text(chunks) -> str:
    """The text of a streamed one-choice reply."""
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def in_threads(run, count: int, timeout_s: float) -> None:
    """run(0) ... run(count - 1) at once, one thread each; each thread is waited for `timeout_s` at most."""
    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)


def post_json(*args) -> list[dict]:
    result = run_cli("post", *args, "--raw", "--json", "--no-history", "--max-tokens", MAX_TOKENS)
    assert result.returncode == 0, result.stderr
    return sorted((json.loads(line) for line in result.stdout.splitlines()), key=lambda d: d["draft"])


def test_models_and_health_name_the_demo(server, client):
    models = client.models.list().data
    assert [m.id for m in models] == ["model"]  # the demo model's directory
    assert models[0].model_extra["bobby"] == {"adapter": "adapter", "adapter_default": True}
    health = server.health()
    assert (health["status"], health["model"], health["adapter"]) == ("ok", "model", "adapter")


def test_greedy_chat_equals_post_raw_and_logs_one_line(server, client):
    reply = chat(client, temperature=0)
    printed = run_cli("post", PROMPT, "--temperature", 0, "--raw", "--no-history", "--max-tokens", MAX_TOKENS)
    assert printed.returncode == 0, printed.stderr
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content + "\n" == printed.stdout
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= MAX_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    line = f"POST /v1/chat/completions 200 tokens={usage.prompt_tokens}+{usage.completion_tokens} "
    server.wait_for(lambda: any(line in entry for entry in server.lines), what="the request's log line")


def test_adapter_per_request_matches_post_with_and_without_adapter(client):
    on = post_json(PROMPT, "--temperature", 0)[0]
    off = post_json(PROMPT, "--temperature", 0, "--no-adapter")[0]
    assert on["text"] != off["text"]  # the demo adapter changes the greedy text: the switch is observable
    off_reply = chat(client, temperature=0, extra_body={"bobby": {"adapter": False}})
    named_reply = chat(client, temperature=0, extra_body={"bobby": {"adapter": "adapter"}})
    assert off_reply.choices[0].message.content == off["text"]
    assert named_reply.choices[0].message.content == on["text"]
    assert (off_reply.usage.prompt_tokens, off_reply.usage.completion_tokens) == \
        (off["prompt_tokens"], off["generated_tokens"])
    assert chat(client, temperature=0).choices[0].message.content == on["text"]  # the default is back on


def test_rows_with_and_without_the_adapter_in_flight_together_keep_their_setting(client):
    on = chat(client, temperature=0).choices[0].message.content
    off = chat(client, temperature=0, extra_body={"bobby": {"adapter": False}}).choices[0].message.content
    assert on != off
    settings = (True, False, True, False)
    results: list[str | None] = [None] * len(settings)

    def run(i: int) -> None:
        stream = chat(client, temperature=0, stream=True, extra_body={"bobby": {"adapter": settings[i]}})
        results[i] = streamed_text(stream)

    in_threads(run, len(settings), 60)
    assert results == [on if adapter else off for adapter in settings]


def test_stream_adds_up_to_the_reply_and_reports_usage(client):
    whole = chat(client, temperature=0)
    chunks = list(chat(client, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = streamed_text(chunks)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_n_seeded_choices_equal_posts_drafts_streamed_or_not(client):
    drafts = post_json(3, PROMPT, "--temperature", 1.0, "--top-p", 1.0, "--seed", 7)
    reply = chat(client, n=3, seed=7, temperature=1.0)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert [c.model_extra["bobby"]["seed"] for c in reply.choices] == [7, 8, 9]
    assert [c.message.content for c in reply.choices] == [d["text"] for d in drafts]
    assert reply.usage.completion_tokens == sum(d["generated_tokens"] for d in drafts)
    streamed = ["", "", ""]
    for chunk in chat(client, n=3, seed=7, temperature=1.0, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert streamed == [d["text"] for d in drafts]


def test_raw_completion_of_the_rendered_prompt_equals_the_chat_reply(client):
    from bobby_tui.demo import DEMO_MODEL_DIR
    from inference.tokenizer import Tokenizer

    rendered = Tokenizer(DEMO_MODEL_DIR).apply_chat_template([{"role": "user", "content": PROMPT}])
    completion = client.completions.create(model="demo", prompt=rendered, temperature=0, max_tokens=MAX_TOKENS)
    assert completion.object == "text_completion"
    assert completion.choices[0].text == chat(client, temperature=0).choices[0].message.content
    streamed = client.completions.create(model="demo", prompt=rendered, temperature=0, max_tokens=MAX_TOKENS,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == completion.choices[0].text


def test_eight_concurrent_streams_share_the_batch_and_each_get_their_solo_text(server, client):
    prompts = [f"Write a post about {topic}." for topic in
               ("cats", "rain", "Mondays", "coffee", "trains", "the moon", "taxes", "music")]
    # seeded, so each text is known from its solo run; near-uniform sampling keeps every row going for all 64 steps
    options = dict(temperature=5.0, max_tokens=64)
    expected = [chat(client, p, seed=i, **options).choices[0].message.content for i, p in enumerate(prompts)]
    assert len(set(expected)) == len(prompts)  # a mix-up between rows would show
    peak_before = server.health()["peak_rows"]
    got: list[str | None] = [None] * len(prompts)
    start = threading.Barrier(len(prompts))

    def run(i: int) -> None:
        start.wait()
        stream = chat(client, prompts[i], seed=i, stream=True, **options)
        got[i] = streamed_text(stream)

    in_threads(run, len(prompts), 120)
    assert got == expected
    assert peak_before < len(prompts) <= server.health()["peak_rows"]  # all 8 decoded in one batch at some step


def test_a_request_joins_a_running_batch_without_waiting_for_it(server, client):
    solo_started = time.monotonic()
    solo = chat(client, temperature=0).choices[0].message.content
    solo_s = time.monotonic() - solo_started
    long = client.chat.completions.create(**long_stream_body(), stream=True)
    [next(long) for _ in range(4)]
    joined_started = time.monotonic()
    joined = chat(client, temperature=0).choices[0].message.content
    joined_s = time.monotonic() - joined_started
    assert joined == solo  # beside another request's row, the same text
    assert server.health()["active_rows"] == 1  # the long request is still decoding: the short one did not wait
    assert joined_s < solo_s + 1.0
    long.close()


def test_a_disconnected_stream_frees_its_row_at_once(server, client):
    stream = client.chat.completions.create(**long_stream_body(), stream=True)
    received = [next(stream) for _ in range(4)]
    assert all(c.choices[0].finish_reason is None for c in received)
    assert server.health()["active_rows"] == 1
    stream.close()
    server.wait_for(lambda: server.health()["active_rows"] == 0, timeout=2, what="the row to be freed")
    steps = server.health()["steps"]
    time.sleep(0.3)
    assert server.health()["steps"] == steps  # nothing left to decode: the ~1300 remaining tokens were dropped
    gone = [line for line in server.lines if "(client gone)" in line]
    assert gone and re.search(r"tokens=\d+\+\d+", gone[-1])


def test_a_client_leaving_before_its_whole_reply_frees_the_row_too(server):
    body = json.dumps(long_stream_body()).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        server.wait_for(lambda: server.health()["active_rows"] == 1, what="the request's row")
    server.wait_for(lambda: server.health()["active_rows"] == 0, timeout=2, what="the row to be freed")
    server.wait_for(lambda: any("POST /v1/chat/completions 499" in line for line in server.lines),
                    what="the request's log line")


def test_bad_request_through_the_client_is_a_400_with_the_message(client):
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, temperature=-1)
    assert err.value.status_code == 400
    assert err.value.body == {"message": "temperature must be in [0, 100] (got -1)", "type": "invalid_request_error",
                              "param": "temperature", "code": None}
