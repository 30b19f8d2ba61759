"""Every class of bad input gets its HTTP status and an OpenAI-style JSON error, and the server keeps serving."""

from __future__ import annotations

import pytest
from server_helpers import ServerProcess

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess("--max-tokens", 64, "--max-n", 4, user_dirs=tmp_path_factory.mktemp("serve-user"))
    yield process
    process.terminate()


def chat(**fields) -> dict:
    return {"model": "demo", "messages": USER, "max_tokens": 4, **fields}


# (body, param the error names, words its message contains)
BAD_CHAT_BODIES = [
    # unknown roles and malformed messages
    (chat(messages=[{"role": "robot", "content": "hi"}]), "messages[0].role", "must be one of"),
    (chat(messages=[{"role": "tool", "content": "hi"}]), "messages[0].role", "must be one of"),
    (chat(messages=[]), "messages", "non-empty array"),
    (chat(messages="hi"), "messages", "non-empty array"),
    (chat(messages=["hi"]), "messages[0]", "must be an object"),
    (chat(messages=[{"role": "user", "content": 5}]), "messages[0].content", "string or an array"),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     "messages[0].content[0]", "text only"),
    (chat(messages=[{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}]),
     "messages[0].tool_calls", "not supported"),
    ({"model": "demo"}, "messages", "is required"),
    ({"messages": USER}, "model", "must be a string"),
    # wrong types
    (chat(temperature="hot"), "temperature", "must be a number"),
    (chat(temperature=True), "temperature", "must be a number"),
    (chat(n="2"), "n", "must be an integer"),
    (chat(max_tokens=2.5), "max_tokens", "must be an integer"),
    (chat(stream="yes"), "stream", "boolean"),
    (chat(stop=[1, 2]), "stop", "string or an array of strings"),
    (chat(stream_options=True), "stream_options", "include_usage"),
    (chat(bobby=[]), "bobby", "must be an object"),
    (chat(bobby={"adapter": "yes"}), "bobby.adapter", "is not loaded"),
    (chat(bobby={"adapter": 1}), "bobby.adapter", "boolean"),
    # out of range (the engine's SAMPLING_LIMITS and the server's caps)
    (chat(temperature=-0.5), "temperature", "[0, 100]"),
    (chat(top_p=0), "top_p", "(0, 1]"),
    (chat(top_p=1.5), "top_p", "(0, 1]"),
    (chat(seed=-1), "seed", "[0, 9223372036854775808)"),
    (chat(seed=2**63 - 1, n=2), "seed", "seed"),  # the second choice's seed S+1 is out of range
    (chat(n=0), "n", "[1, 4]"),
    (chat(n=5), "n", "[1, 4]"),
    (chat(max_tokens=0), "max_tokens", "[1, 64]"),
    (chat(max_tokens=65), "max_tokens", "[1, 64]"),
    (chat(max_tokens=None, max_completion_tokens=1000), "max_completion_tokens", "[1, 64]"),
    (chat(max_tokens=4, max_completion_tokens=8), "max_tokens", "differ"),
    (chat(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
    (chat(stop=""), "stop", "1 to 256"),
    (chat(bobby={"top_k": -1}), "bobby.top_k", ">= 0"),
    (chat(bobby={"min_p": 2}), "bobby.min_p", "[0, 1]"),
    (chat(bobby={"repetition_penalty": 0}), "bobby.repetition_penalty", "(0, 100]"),
    # fields we do not have
    (chat(frobnicate=1), "frobnicate", "unrecognized"),
    (chat(bobby={"temperature": 1}), "bobby.temperature", "unrecognized"),
    (chat(logprobs=True), "logprobs", "not supported"),
    (chat(tools=[{"type": "function", "function": {"name": "f"}}]), "tools", "not supported"),
]


@pytest.mark.parametrize("body,param,words", BAD_CHAT_BODIES, ids=[f"{p}:{w}" for _, p, w in BAD_CHAT_BODIES])
def test_bad_chat_fields_are_400_naming_the_field(server, body, param, words):
    status, _, error = server.request("POST", CHAT, body)
    assert status == 400, error
    assert set(error) == {"error"} and set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == param
    assert words in error["error"]["message"]


@pytest.mark.parametrize("raw,words", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),  # deep nesting: a clean 400, not a RecursionError
])
def test_malformed_bodies_are_400(server, raw, words):
    status, _, error = server.request("POST", CHAT, raw=raw)
    assert status == 400 and words in error["error"]["message"], error


def test_raw_completion_needs_a_string_prompt(server):
    for prompt, words in ((None, "is required"), ([1, 2, 3], "must be a string"), ("", "must not be empty")):
        status, _, error = server.request("POST", "/v1/completions", {"model": "demo", "prompt": prompt})
        assert (status, error["error"]["param"]) == (400, "prompt") and words in error["error"]["message"]


def test_a_prompt_past_the_models_context_is_refused_before_prefill(server):
    long = "sea " * 45_000  # > 40960 tokens, the demo's context, in well under the 1 MiB body limit
    status, _, error = server.request("POST", CHAT, chat(messages=[{"role": "user", "content": long}]))
    assert (status, error["error"]["code"], error["error"]["param"]) == (400, "context_length_exceeded", "messages")
    assert "40960" in error["error"]["message"]


def test_routing_and_size_errors_are_json(server):
    status, _, error = server.request("GET", "/v1/nothing%0A12:00:00%20POST%20/v1/forged")
    assert (status, error["error"]["code"]) == (404, "not_found")
    server.wait_for(lambda: any("/v1/nothing%0A12:00:00%20POST" in line for line in server.lines),
                    what="the 404's log line, its path as sent")
    assert not any(line.startswith("12:00:00 POST /v1/forged") for line in server.lines)  # no forged log line
    status, _, error = server.request("GET", CHAT)
    assert (status, error["error"]["code"]) == (405, "method_not_allowed")
    status, _, error = server.request("POST", CHAT, raw=b'{"model": "' + b"x" * (2 << 20) + b'"}')
    assert (status, error["error"]["code"]) == (413, "request_too_large")


def test_the_server_still_serves_after_bad_input(server):
    status, _, reply = server.request("POST", CHAT, chat(temperature=0))
    assert status == 200 and reply["choices"][0]["message"]["content"]
    assert server.proc.poll() is None
    assert not any("Traceback" in line for line in server.lines)
    assert not any(" 500 " in line for line in server.lines)
