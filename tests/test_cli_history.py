"""history / favorite / unfavorite / export through the same SQLite store the TUI uses (no model needed)."""

import dataclasses
import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from cli_helpers import REPO, run_cli

from bobby_tui.paths import config_path, db_path
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


def test_export_writes_through_a_symlink_and_keeps_the_mode(ids, tmp_path):
    real = tmp_path / "shared" / "drafts.jsonl"
    real.parent.mkdir()
    real.write_text("old\n")
    real.chmod(0o640)
    link = tmp_path / "drafts.jsonl"
    link.symlink_to(real)
    assert run_cli("export", link).returncode == 0
    assert link.is_symlink() and link.resolve() == real
    assert [json.loads(line)["id"] for line in real.read_text().splitlines()] == ids
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert sorted(p.name for p in real.parent.iterdir()) == ["drafts.jsonl"]  # no temporary left behind


def test_a_new_export_gets_the_umask_mode_and_leaves_other_files_alone(ids, tmp_path):
    out = tmp_path / "favs.md"
    other_writer = tmp_path / "favs.md.tmp"  # the name a fixed-name temporary would take
    other_writer.write_text("someone else's")
    assert run_cli("export", out).returncode == 0
    assert other_writer.read_text() == "someone else's"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_concurrent_exports_do_not_collide(tmp_path):
    rows, writers = 8000, 4
    with Store(db_path()):
        pass  # the schema
    with sqlite3.connect(db_path()) as db:  # some megabytes, so that the writes overlap
        db.executemany(
            "INSERT INTO generations (created_at, prompt, text, temperature, top_p, seed, model, prompt_tokens, "
            "generated_tokens, decode_tok_s, prefill_tok_s, finish_reason) VALUES "
            "('2026-01-01T00:00:00+00:00', 'p', ?, 0.8, 0.9, 1, 'm', 1, 1, 1.0, 1.0, 'stop')",
            [(f"draft {i} " + "x" * 2000,) for i in range(rows)],
        )
    out, go = tmp_path / "all.jsonl", tmp_path / "go"
    # every writer waits for the same moment, then exports to the same file
    script = ("import os, sys, time\nfrom bobby_tui.cli import main\n"
              "while not os.path.exists(sys.argv[1]): time.sleep(0.001)\nsys.exit(main(['export', sys.argv[2]]))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", script, go, out], cwd=REPO, env=env, stderr=subprocess.PIPE,
                              text=True) for _ in range(writers)]
    time.sleep(2)  # all imported and waiting
    go.touch()
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert [code for code, _ in results] == [0] * writers, results
    lines = out.read_text().splitlines()
    assert len(lines) == rows and all(json.loads(line)["model"] == "m" for line in lines)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("kind", ["directory", "fifo", "loop"])
def test_export_to_something_that_is_not_a_file_is_one_line(ids, tmp_path, kind):
    target = tmp_path / "target.md"
    if kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to(tmp_path / "other.md")
        (tmp_path / "other.md").symlink_to(target)
    result = run_cli("export", target, check_one_line_error=True, timeout=30)
    assert result.returncode == 1 and str(target) in result.stderr
    assert {"directory": "directory", "fifo": "not a regular file", "loop": "symbolic links"}[kind] in result.stderr


def test_raw_text_with_special_tokens_is_exported_only_with_raw(tmp_path):
    with Store(db_path()) as store:
        store.add(dataclasses.replace(record(1, "Clean post."), raw_text="<|im_start|>Clean post.<|endoftext|>"))
    out = tmp_path / "all.jsonl"
    assert run_cli("export", out).returncode == 0
    assert "<|" not in out.read_text() and "<|" not in run_cli("history", "--json").stdout
    assert run_cli("export", "--raw", out).returncode == 0
    assert json.loads(out.read_text())["raw_text"] == "<|im_start|>Clean post.<|endoftext|>"
    assert json.loads(run_cli("history", "--json", "--raw").stdout)["raw_text"].startswith("<|im_start|>")


def test_a_history_from_before_attempt_seeds_is_upgraded_in_place():
    from bobby_tui.storage import _SCHEMA_1

    db_path().parent.mkdir(parents=True)
    with sqlite3.connect(db_path()) as db:  # the first schema, with one row in it
        db.executescript(_SCHEMA_1)
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (1)")
        db.execute("INSERT INTO generations (created_at, prompt, text, temperature, top_p, seed, model, prompt_tokens, "
                   "generated_tokens, decode_tok_s, prefill_tok_s, finish_reason) VALUES "
                   "('2026-01-01T00:00:00+00:00', 'p', 'old draft', 0.8, 0.9, 4242, 'm', 1, 1, 1.0, 1.0, 'stop')")
    (row,) = [json.loads(line) for line in run_cli("history", "--json").stdout.splitlines()]
    assert (row["text"], row["seed"], row["attempt_seed"], row["attempts"]) == ("old draft", 4242, 4242, 1)


def test_history_delete_is_all_or_nothing_one_line_per_id(ids):
    unknown = run_cli("history", "delete", ids[0], 999, check_one_line_error=True)
    assert unknown.returncode == 1 and "no generation with id 999 (nothing deleted)" in unknown.stderr
    assert len(run_cli("history").stdout.splitlines()) == 3
    deleted = run_cli("history", "delete", ids[2], ids[0])
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.splitlines() == [f"deleted #{ids[0]}", f"deleted #{ids[2]}"]
    assert [int(line.split()[0]) for line in run_cli("history").stdout.splitlines()] == [ids[1]]
    assert run_cli("history", "--search", "coffee").stdout == ""  # the search index forgets them too
    mixed = run_cli("history", "--json", "delete", ids[1], check_one_line_error=True)
    assert mixed.returncode == 2 and "--json is for listing drafts" in mixed.stderr
    assert run_cli("history", "delete", check_one_line_error=True).returncode == 2


def test_history_prune_deletes_old_unfavorited_drafts_and_says_how_many():
    old = datetime.now(timezone.utc) - timedelta(days=10)
    with Store(db_path()) as store:
        kept_favorite = store.add(dataclasses.replace(record(0, "old favorite"), created_at=old.isoformat(),
                                                      favorite=True))
        store.add(dataclasses.replace(record(1, "old draft"), created_at=old.isoformat()))
        store.add(dataclasses.replace(record(2, "another old one"), created_at=old.isoformat()))
        recent = store.add(record(3, "today's draft"))
    result = run_cli("history", "prune", "--older-than", 7)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "deleted 2 drafts older than 7 days (favorites kept)\n"
    assert [int(line.split()[0]) for line in run_cli("history").stdout.splitlines()] == [recent, kept_favorite]
    again = run_cli("history", "prune", "--older-than", "0.5")
    assert again.stdout.startswith("deleted 0 drafts")
    bad = run_cli("history", "prune", "--older-than", "-1", check_one_line_error=True)
    assert bad.returncode == 2 and "--older-than" in bad.stderr
    assert run_cli("history", "prune", check_one_line_error=True).returncode == 2


def test_search_finds_every_word_ignoring_case_and_accents(ids):
    with Store(db_path()) as store:
        accented = store.add(record(4, "Un café crème"))
    for search, expected in (("CAFE creme", [accented]), ("coffee plan", [ids[0]]), ("coffee", [ids[2], ids[0]])):
        found = run_cli("history", "--search", search, "--json").stdout.splitlines()
        assert [json.loads(line)["id"] for line in found] == expected, search


def test_adapters_lists_the_folder_with_facts_and_problems(tmp_path):
    from cli_helpers import demo_dirs

    model_dir, adapter_dir = demo_dirs()
    folder = tmp_path / "adapters"
    folder.mkdir()
    (folder / "zippy").symlink_to(adapter_dir, target_is_directory=True)
    (folder / "broken").mkdir()
    (folder / "broken" / "adapter_config.json").write_text("{not json")
    (folder / "README.md").write_text("not an adapter")
    missing = run_cli("adapters", check_one_line_error=True)
    assert missing.returncode == 1 and "no adapters folder: set adapters_dir" in missing.stderr
    config = config_path()
    config.parent.mkdir(parents=True)
    config.write_text(f'adapters_dir = "{folder}"\nmodel = "{model_dir}"\n')
    result = run_cli("adapters")
    assert result.returncode == 1  # one has problems
    broken, zippy = result.stdout.splitlines()
    assert broken.startswith("broken  problems (1): ") and "adapter_config.json" in broken
    adapted = json.loads((adapter_dir / "adapter_config.json").read_text())["num_layers"]
    layers = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
    first = layers - adapted
    assert zippy.startswith(f"zippy   rank 8 · scale 20 · layers {first}-{layers - 1} ({adapted} of {layers}) · ")
    assert zippy.endswith("problems: none")
    (folder / "broken" / "adapter_config.json").unlink()
    (folder / "broken").rmdir()
    assert run_cli("adapters").returncode == 0
    assert run_cli("adapters", tmp_path / "empty", check_one_line_error=True).returncode == 1
