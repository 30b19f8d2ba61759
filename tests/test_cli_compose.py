"""`bobby-tui post --reply-to / --prefill / --persona / --adapter NAME` and PROMPT from stdin, on the demo model:
greedy parity with mlx_lm for the same conversation, and the rows they record."""

from __future__ import annotations

import io
import json
import sys

import pytest
from cli_helpers import demo_dirs, run_cli

from bobby_tui import cli
from bobby_tui.paths import config_path

PROMPT = "Write about the sea."
INSTRUCTION = "make it shorter"
PREFILL = "The sea is"
MAX_TOKENS = 24
GREEDY = ("--temperature", 0, "--raw", "--max-tokens", MAX_TOKENS)


@pytest.fixture(scope="module")
def mlx_lm_demo():
    """mlx_lm's demo model, with its adapter and without: the oracle."""
    from parity import mlx_lm_model

    model_dir, adapter_dir = demo_dirs()
    return {True: mlx_lm_model(model_dir, adapter_dir), False: mlx_lm_model(model_dir)}


def mlx_lm_reply(oracle, messages: list[dict], prefill: str | None = None) -> str:
    """What mlx_lm.generate prints for `messages` (with --prefill-response PREFILL: its own rendering of it)."""
    from mlx_lm import generate

    model, tokenizer = oracle
    if prefill is None:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False,
                                               tokenize=False)
    else:  # mlx_lm.generate's --prefill-response: the assistant turn appended and continued
        prompt = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": prefill}],
                                               tokenize=False, continue_final_message=True,
                                               add_generation_prompt=False)
    return generate(model, tokenizer, prompt, max_tokens=MAX_TOKENS)


def write_config(tmp_path) -> None:
    """An adapters folder holding the demo adapter as `zippy`, and a persona for each side of it."""
    _, adapter_dir = demo_dirs()
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    (adapters / "zippy").symlink_to(adapter_dir, target_is_directory=True)
    path = config_path()
    path.parent.mkdir(parents=True)
    path.write_text(f'adapters_dir = "{adapters}"\n'
                    '[personas.plain]\nadapter = ""\n'
                    '[personas.zippy]\nadapter = "zippy"\n')


def post_json(*args, stdin: str | None = None) -> dict:
    result = run_cli("post", *args, *GREEDY, "--json", stdin=stdin)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    return json.loads(line)


def row(gen_id: int) -> dict:
    listed = run_cli("history", "--json", "--raw", "--limit", 100)
    return next(r for r in map(json.loads, listed.stdout.splitlines()) if r["id"] == gen_id)


@pytest.mark.parametrize("with_adapter", [True, False], ids=["adapter", "base"])
def test_reply_to_continues_the_conversation_as_mlx_lm_does(tmp_path, mlx_lm_demo, with_adapter):
    write_config(tmp_path)
    choice = ("--adapter", "zippy") if with_adapter else ("--persona", "plain")
    first = post_json("-", *choice, stdin=PROMPT)  # the prompt from stdin, as given
    user = [{"role": "user", "content": PROMPT}]
    assert first["text"] == mlx_lm_reply(mlx_lm_demo[with_adapter], user) and first["text"].strip()

    reply = post_json("--reply-to", first["id"], INSTRUCTION, *choice)
    conversation = [*user, {"role": "assistant", "content": first["text"]}, {"role": "user", "content": INSTRUCTION}]
    assert reply["text"] == mlx_lm_reply(mlx_lm_demo[with_adapter], conversation)
    assert reply["prompt_tokens"] > first["prompt_tokens"]
    assert (reply["parent_id"], reply["prompt"]) == (first["id"], INSTRUCTION)
    recorded = row(reply["id"])
    assert (recorded["messages"], recorded["parent_id"], recorded["text"]) == (conversation, first["id"], reply["text"])
    assert recorded["adapter"] == ("zippy" if with_adapter else None)
    assert recorded["persona"] == (None if with_adapter else "plain")


@pytest.mark.parametrize("with_adapter", [True, False], ids=["adapter", "base"])
def test_prefill_equals_mlx_lm_prefill_response(tmp_path, mlx_lm_demo, with_adapter):
    write_config(tmp_path)
    draft = post_json(PROMPT, "--prefill", PREFILL, "--persona", "zippy" if with_adapter else "plain")
    continuation = mlx_lm_reply(mlx_lm_demo[with_adapter], [{"role": "user", "content": PROMPT}], prefill=PREFILL)
    assert continuation.strip()
    assert draft["text"] == PREFILL + continuation  # the draft starts with the prefill
    recorded = row(draft["id"])
    assert (recorded["prefill"], recorded["messages"], recorded["persona"]) == (
        PREFILL, None, "zippy" if with_adapter else "plain")


def test_unknown_persona_adapter_and_row_are_one_line_each(tmp_path):
    write_config(tmp_path)
    persona = run_cli("post", "hi", "--persona", "nobody", check_one_line_error=True)
    assert persona.returncode == 1 and "unknown persona 'nobody' (known: plain, zippy)" in persona.stderr
    adapter = run_cli("post", "hi", "--adapter", "v9", check_one_line_error=True)
    assert adapter.returncode == 1 and f"adapter 'v9': not an adapter in {tmp_path / 'adapters'}" in adapter.stderr
    reply = run_cli("post", "--reply-to", 42, "shorter", check_one_line_error=True)
    assert reply.returncode == 1 and "no generation with id 42" in reply.stderr
    bare = run_cli("post", "--reply-to", 42, check_one_line_error=True)
    assert bare.returncode == 2 and "--reply-to 42 needs PROMPT" in bare.stderr


def run_main_with_stdin(data: bytes, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    code = cli.main(["post", "-", "--no-history"])
    return code, capsys.readouterr().err


def test_a_prompt_from_stdin_is_bounded_and_must_be_utf8(monkeypatch, capsys):
    code, err = run_main_with_stdin(b"x" * (cli.PROMPT_CHAR_LIMIT + 1), monkeypatch, capsys)
    assert code == 2 and f"more than {cli.PROMPT_CHAR_LIMIT:,} characters" in err and len(err.splitlines()) == 1
    code, err = run_main_with_stdin("é".encode() * (cli.PROMPT_CHAR_LIMIT * 3), monkeypatch, capsys)
    assert code == 2 and "more than" in err  # read no further than the bound
    code, err = run_main_with_stdin(b"caf\xe9", monkeypatch, capsys)
    assert code == 2 and "not valid UTF-8 (an undecodable byte at byte 3)" in err
    code, err = run_main_with_stdin(b"  \n", monkeypatch, capsys)
    assert code == 2 and "the prompt from stdin is only whitespace" in err
