"""history / favorite / unfavorite / export through the same SQLite store the TUI uses (no model needed)."""

import dataclasses
import json
import sqlite3

import pytest
from cli_helpers import run_cli

from bobby_tui.paths import db_path
from bobby_tui.storage import GenerationRecord, Store


def record(i: int, text: str) -> GenerationRecord:
    return GenerationRecord(
        prompt=f"prompt {i}", text=text, temperature=0.8, top_p=0.9, seed=100 + i, model="demo-model",
        adapter="demo-adapter" if i else None, prompt_tokens=10, generated_tokens=20, decode_tok_s=5.0,
        prefill_tok_s=50.0, finish_reason="stop",
    )


@pytest.fixture
def ids():
    """Three drafts as the app would have stored them."""
    with Store(db_path()) as store:
        return [store.add(record(i, text)) for i, text in enumerate(
            ["Morning coffee\nand a plan.", "Shipped the release today!", "Coffee again, naturally."]
        )]


def test_history_lists_newest_first_and_filters(ids):
    result = run_cli("history")
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert [int(line.split()[0]) for line in lines] == ids[::-1]
    assert "Morning coffee ⏎ and a plan." in lines[-1]
    searched = run_cli("history", "--search", "coffee", "--json").stdout.splitlines()
    assert [json.loads(line)["id"] for line in searched] == [ids[2], ids[0]]
    assert len(run_cli("history", "--limit", "1").stdout.splitlines()) == 1


def test_favorite_round_trip_is_seen_by_the_store(ids):
    assert run_cli("favorite", ids[1]).returncode == 0
    favorites = [json.loads(line) for line in run_cli("history", "--favorites", "--json").stdout.splitlines()]
    assert [(f["id"], f["text"], f["favorite"]) for f in favorites] == [(ids[1], "Shipped the release today!", True)]
    with Store(db_path()) as store:  # what the TUI would read
        assert store.get(ids[1]).favorite is True
    assert run_cli("unfavorite", ids[1]).returncode == 0
    assert run_cli("history", "--favorites").stdout == ""
    with Store(db_path()) as store:
        assert store.get(ids[1]).favorite is False


def test_export_favorites_as_markdown_and_json_lines(ids, tmp_path):
    for gen_id in (ids[2], ids[0]):
        assert run_cli("favorite", gen_id).returncode == 0
    md, jsonl = tmp_path / "out" / "favs.md", tmp_path / "favs.JSONL"
    assert run_cli("export", "--favorites", md).returncode == 0
    text = md.read_text()
    assert text.index("Morning coffee\nand a plan.") < text.index("Coffee again, naturally.")  # oldest first
    assert "Shipped the release" not in text
    assert f"## #{ids[0]}" in text and "demo-model" in text
    result = run_cli("export", "--favorites", jsonl)
    assert result.returncode == 0 and "exported 2 favorites" in result.stderr
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [(r["id"], r["text"], r["seed"], r["adapter"]) for r in rows] == [
        (ids[0], "Morning coffee\nand a plan.", 100, None), (ids[2], "Coffee again, naturally.", 102, "demo-adapter"),
    ]


def test_export_without_favorites_writes_every_draft(ids, tmp_path):
    out = tmp_path / "all.jsonl"
    assert run_cli("export", out).returncode == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ids


def test_unknown_favorite_id_is_one_line_exit_1(ids):
    result = run_cli("favorite", 999, check_one_line_error=True)
    assert result.returncode == 1
    assert str(db_path()) in result.stderr and "999" in result.stderr


def test_bad_export_extension_is_one_line_exit_2(ids, tmp_path):
    result = run_cli("export", "--favorites", tmp_path / "favs.txt", check_one_line_error=True)
    assert result.returncode == 2 and "favs.txt" in result.stderr and ".md" in result.stderr
    assert not (tmp_path / "favs.txt").exists()


def test_a_corrupt_history_file_is_one_line_exit_1_and_kept(tmp_path):
    db_path().parent.mkdir(parents=True)
    db_path().write_bytes(b"definitely not sqlite")
    result = run_cli("history", check_one_line_error=True)
    assert result.returncode == 1 and str(db_path()) in result.stderr
    assert db_path().read_bytes() == b"definitely not sqlite"


@pytest.mark.parametrize("args", [["favorite", "abc"], ["history", "--limit", "0"], ["frobnicate"], ["post", "-n", "0"],
                                  ["post", "--top-p", "1.5"], ["--model", "/m", "history"]])
def test_bad_arguments_are_one_line_exit_2(args):
    result = run_cli(*args, check_one_line_error=True)
    assert result.returncode == 2


@pytest.mark.parametrize("command", ["post", "history", "favorite", "unfavorite", "export", "inspect"])
def test_every_command_has_help(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0 and f"usage: bobby-tui {command}" in result.stdout


def test_times_are_local_with_their_offset(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +05:30 all year: no daylight saving to trip on
    with Store(db_path()) as store:
        gen_id = store.add(dataclasses.replace(record(1, "Chai time."), created_at="2026-01-15T08:30:00+00:00"))
    listed = run_cli("history").stdout
    assert f"{gen_id:>5}   2026-01-15 14:00+05:30  Chai time." in listed
    assert json.loads(run_cli("history", "--json").stdout)["created_at"] == "2026-01-15T14:00:00+05:30"
    assert "local" in run_cli("history", "--help").stdout
    md, jsonl = tmp_path / "all.md", tmp_path / "all.jsonl"
    assert run_cli("export", md).returncode == 0 and run_cli("export", jsonl).returncode == 0
    assert f"## #{gen_id} · 2026-01-15 14:00+05:30" in md.read_text() and "local" in md.read_text()
    assert json.loads(jsonl.read_text())["created_at"] == "2026-01-15T14:00:00+05:30"


def test_odd_history_rows_are_listed_and_exported(tmp_path):
    """A row another program wrote: a BLOB for text, a time that is not one, a string for a number."""
    with Store(db_path()) as store:
        gen_id = store.add(record(1, "fine"))
    with sqlite3.connect(db_path()) as db:
        db.execute("UPDATE generations SET text = ?, created_at = 'yesterday', temperature = 'warm' WHERE id = ?",
                   (b"caf\xc3\xa9 \xff", gen_id))
    listed = run_cli("history")
    assert listed.returncode == 0 and "yesterday  café \\xff" in listed.stdout
    assert json.loads(run_cli("history", "--json").stdout)["text"] == "café \\xff"
    for name in ("odd.md", "odd.jsonl"):
        result = run_cli("export", tmp_path / name)
        assert result.returncode == 0, result.stderr
        assert "café" in (tmp_path / name).read_text()
