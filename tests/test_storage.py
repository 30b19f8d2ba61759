import dataclasses
import os
import pathlib
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
from datetime import datetime, timedelta, timezone

import pytest

from bobby_tui import storage
from bobby_tui.storage import MIGRATIONS, SCHEMA_VERSION, GenerationRecord, Store, StoreError


def make_record(i: int = 0, **overrides) -> GenerationRecord:
    fields = dict(
        prompt=f"prompt {i}", text=f"text {i}", temperature=0.9, top_p=0.95, seed=1000 + i, model="qwen",
        adapter="bobby", prompt_tokens=12, generated_tokens=40 + i, decode_tok_s=30.5, prefill_tok_s=200.0,
        finish_reason="stop", system_prompt="be brief", raw_text=f"<think></think>text {i}",
    )
    return GenerationRecord(**{**fields, **overrides})


@pytest.fixture
def db(tmp_path):
    return tmp_path / "data" / "history.sqlite3"


def test_add_get_round_trip_keeps_every_field(db):
    with Store(db) as store:
        rec = make_record(1, adapter=None)
        gen_id = store.add(rec)
        got = store.get(gen_id)
    assert got.id == gen_id and got.created_at and got.favorite is False
    assert dataclasses.replace(got, id=None, created_at=None) == rec
    assert got.created_at.endswith("+00:00")


def test_history_is_newest_first_with_limit_search_and_favorites(db):
    store = Store(db)
    ids = [store.add(make_record(i, text=t)) for i, t in enumerate(["Coffee first", "50% off_sale", "coffee later"])]
    assert [r.id for r in store.history()] == ids[::-1]
    assert [r.id for r in store.history(limit=2)] == ids[:0:-1]
    assert [r.id for r in store.history(search="COFFEE")] == [ids[2], ids[0]]
    assert [r.id for r in store.history(search="off_sale")] == [ids[1]]
    assert [r.id for r in store.history(search="prompt 1")] == [ids[1]]  # prompts are searched too
    store.set_favorite(ids[0], True)
    assert [r.id for r in store.history(favorites_only=True)] == [ids[0]]
    store.set_favorite(ids[0], False)
    assert store.history(favorites_only=True) == []
    store.close()


def test_unknown_ids(db):
    with Store(db) as store:
        assert store.get(42) is None
        with pytest.raises(StoreError, match=rf"^{db}: no generation with id 42$"):
            store.set_favorite(42, True)


def test_schema_version_is_recorded_and_reopening_keeps_rows(db):
    with Store(db) as store:
        store.add(make_record())
    with Store(db) as store:
        assert len(store.history()) == 1
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_a_newer_schema_is_refused(db):
    Store(db).close()
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version = 99")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="version 99 is newer"):
        Store(db)


def test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(db):
    db.parent.mkdir(parents=True)
    content = b"my precious notes, not a database\n" * 100
    db.write_bytes(content)
    with pytest.raises(StoreError) as info:
        Store(db)
    message = str(info.value)
    assert message.startswith(str(db)) and "not a SQLite database" in message and "\n" not in message
    assert db.read_bytes() == content


def test_a_corrupt_sqlite_file_gives_one_line_and_is_left_untouched(db):
    with Store(db) as store:
        store.add(make_record())
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    data = bytearray(db.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # keep the magic, wreck the schema page
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError) as info:
        Store(db)
    assert str(info.value).startswith(str(db)) and "\n" not in str(info.value)
    assert db.read_bytes() == bytes(data)


def test_threads_can_share_one_store(db):
    store = Store(db)
    errors = []

    def write(offset):
        try:
            for i in range(20):
                store.add(make_record(offset + i))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(k * 100,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.history(limit=1000)) == 60
    store.close()


WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests_dir!r})
    from pathlib import Path
    from test_storage import make_record
    from bobby_tui.storage import Store
    store = Store(Path(sys.argv[1]))
    count, tag = int(sys.argv[2]), sys.argv[3]
    if sys.argv[4] == "together":  # wait for the test's go, so that the writers really overlap
        print("ready", flush=True)
        sys.stdin.readline()
    for i in range(count):
        store.add(make_record(i, prompt=tag))
        print(i, flush=True)
    if sys.argv[4] == "hang":
        time.sleep(600)
    """
)


def start_writer(db, count, tag, mode="exit"):
    import pathlib

    script = WRITER.format(tests_dir=str(pathlib.Path(__file__).parent))
    return subprocess.Popen(
        [sys.executable, "-c", script, str(db), str(count), tag, mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )


def test_rows_survive_a_killed_writer(db):
    writer = start_writer(db, 25, "killed", mode="hang")
    for expected in range(25):  # each printed index is a row that add() returned for
        assert writer.stdout.readline().strip() == str(expected)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL
    with Store(db) as store:
        rows = store.history(limit=1000)
    assert len(rows) == 25 and {r.prompt for r in rows} == {"killed"}
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()


def test_two_processes_writing_at_once_lose_nothing(db):
    Store(db).close()  # both writers find the schema; the race under test is the inserts
    n = 300
    writers = [start_writer(db, n, tag, mode="together") for tag in ("a", "b")]
    for w in writers:
        assert w.stdout.readline().strip() == "ready"
    for w in writers:
        w.stdin.write("go\n")
        w.stdin.flush()
    for w in writers:
        w.communicate(timeout=120)
        assert w.returncode == 0
    with Store(db) as store:
        rows = store.history(limit=10 * n)
    assert sorted(r.prompt for r in rows) == ["a"] * n + ["b"] * n
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()


def test_two_processes_creating_the_database_at_once(db):
    writers = [start_writer(db, 5, tag) for tag in ("a", "b")]
    for w in writers:
        w.communicate(timeout=120)
        assert w.returncode == 0
    with Store(db) as store:
        assert len(store.history()) == 10


# --- the database file as another version or another program left it --------------------------------------

# Schema version 1 exactly as the first bobby-tui wrote it: its CREATE statements and its version table, copied
# here (not imported), so this test keeps checking the upgrade of real old files whatever the code becomes.
SCHEMA_1_SQL = """
CREATE TABLE generations (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at       TEXT    NOT NULL,
    prompt           TEXT    NOT NULL,
    system_prompt    TEXT    NOT NULL DEFAULT '',
    text             TEXT    NOT NULL,
    raw_text         TEXT    NOT NULL DEFAULT '',
    temperature      REAL    NOT NULL,
    top_p            REAL    NOT NULL,
    seed             INTEGER NOT NULL,
    model            TEXT    NOT NULL,
    adapter          TEXT,
    prompt_tokens    INTEGER NOT NULL,
    generated_tokens INTEGER NOT NULL,
    decode_tok_s     REAL    NOT NULL,
    prefill_tok_s    REAL    NOT NULL,
    finish_reason    TEXT    NOT NULL,
    favorite         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX generations_favorite ON generations (favorite, id);
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version (version) VALUES (1);
INSERT INTO generations (created_at, prompt, system_prompt, text, raw_text, temperature, top_p, seed, model, adapter,
    prompt_tokens, generated_tokens, decode_tok_s, prefill_tok_s, finish_reason, favorite)
VALUES ('2026-05-01T10:00:00+00:00', 'old prompt', 'be brief', 'old text', '<think></think>old text', 0.7, 0.9, 7,
        'qwen', 'bobby', 10, 20, 30.0, 300.0, 'stop', 1),
       ('2026-05-02T11:00:00+00:00', 'newer prompt', '', 'newer text', '', 1.1, 1.0, 8,
        'qwen', NULL, 11, 21, 31.0, 301.0, 'length', 0);
"""


def test_a_database_written_by_schema_1_is_upgraded_and_keeps_its_rows(db):
    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db)
    con.executescript(SCHEMA_1_SQL)
    con.close()
    with Store(db) as store:
        newer, old = store.history()
        new_id = store.add(make_record(3))
        assert [r.id for r in store.history()] == [new_id, newer.id, old.id]
    assert (old.prompt, old.system_prompt, old.text, old.raw_text, old.seed, old.adapter, old.favorite) == (
        "old prompt", "be brief", "old text", "<think></think>old text", 7, "bobby", True)
    assert (newer.created_at, newer.adapter, newer.finish_reason, newer.top_p) == (
        "2026-05-02T11:00:00+00:00", None, "length", 1.0)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "schema_version" not in tables  # the version moved into the header
    con.close()


def test_a_sqlite_file_of_another_program_is_refused_before_anything_changes(db):
    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE contacts (name TEXT, phone TEXT); INSERT INTO contacts VALUES ('Ada', '555');")
    con.close()
    before = db.read_bytes()
    with pytest.raises(StoreError) as info:
        Store(db)
    message = str(info.value)
    assert message.startswith(f"{db}: ") and "contacts" in message and "\n" not in message
    assert db.read_bytes() == before  # not switched to WAL, no table of ours added
    assert sorted(p.name for p in db.parent.iterdir()) == [db.name]


def test_a_history_file_removed_while_open_refuses_the_write(db):
    store = Store(db)
    store.add(make_record(1))
    db.unlink()
    with pytest.raises(StoreError, match=rf"^{db}: the history database was removed"):
        store.add(make_record(2))
    store.close()


READ_ONLY_LISTER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from bobby_tui.storage import Store, StoreError
    from test_storage import make_record
    store = Store(Path(sys.argv[1]))
    print(",".join(r.prompt for r in store.history()))
    try:
        store.add(make_record(9))
    except StoreError as err:
        print(err)
    """
)


def test_a_read_only_history_still_lists_and_refuses_writes_in_one_line(tmp_path):
    # a directory any user can read: as root the check runs as "nobody", for whom the file really is read-only
    folder = pathlib.Path(tempfile.mkdtemp(prefix="bobby-ro-"))
    try:
        path = folder / "history.sqlite3"
        with Store(path) as store:
            store.add(make_record(1))
            store.add(make_record(2))
        path.chmod(0o444)
        folder.chmod(0o555)
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
        tests_dir = pathlib.Path(__file__).parent
        env = {**os.environ, "PYTHONPATH": f"{tests_dir.parent}{os.pathsep}{tests_dir}"}
        result = subprocess.run(
            [*as_user, sys.executable, "-c", READ_ONLY_LISTER, str(path)],
            capture_output=True, text=True, timeout=60, env=env, cwd="/",
        )
        assert result.returncode == 0, result.stderr
        listed, refusal = result.stdout.splitlines()
        assert listed == "prompt 2,prompt 1"
        assert refusal == f"{path}: the history database is read-only"
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)
        shutil.rmtree(folder)


def test_a_value_sqlite_cannot_store_is_one_line_and_the_store_goes_on(db):
    with Store(db) as store:
        with pytest.raises(StoreError) as info:
            store.add(make_record(1, seed=2**64))
        message = str(info.value)
        assert message.startswith(f"{db}: a value the history database cannot store") and "\n" not in message
        with pytest.raises(StoreError):
            store.add(make_record(2, text="half a pair \ud800"))
        store.add(make_record(3))
        assert [r.prompt for r in store.history()] == ["prompt 3"]


# --- full-text search, delete / restore / prune, conversations ----------------------------------------------


def test_search_is_full_text_case_and_accent_insensitive_every_word_required(db):
    with Store(db) as store:
        assert store.full_text
        texts = ["Un café crème à Zürich", "CAFE society", "naïve coffee, naive tea", "Tea NOT coffee (really)"]
        ids = [store.add(make_record(i, text=t)) for i, t in enumerate(texts)]

        def found(search):
            return [r.id for r in store.history(search=search)]

        assert found("cafe") == [ids[1], ids[0]]  # accents and case folded both ways
        assert found("CAFÉ zurich") == [ids[0]]  # several words: all required, in any order
        assert found("zurich cafe") == [ids[0]]
        assert found("creme society") == []
        assert found("naive") == [ids[2]]
        assert found("coff") == [ids[3], ids[2]]  # a word's start finds it (search as you type)
        assert found("prompt 3") == [ids[3]]  # prompts too
    with Store(db) as store:  # the index is in the file: after a restart too
        assert [r.id for r in store.history(search="zürich")] == [ids[0]]


def test_fts_syntax_in_a_search_is_literal(db):
    with Store(db) as store:
        tea, coffee = store.add(make_record(0, text="tea NOT coffee")), store.add(make_record(1, text="coffee"))
        for search in ['"', 'coffee"', "NOT", "coffee OR", "AND coffee", "NEAR(coffee", "text:coffee", "coffee*",
                       "(coffee", "^coffee", "coffee -tea", "+coffee", "col:", "*"]:
            got = [r.id for r in store.history(search=search)]  # never an FTS5 syntax error
            assert isinstance(got, list), search
        assert [r.id for r in store.history(search="tea NOT")] == [tea]  # NOT is a word here, not the operator
        assert [r.id for r in store.history(search="coffee OR tea")] == []  # nothing holds "or"
        assert [r.id for r in store.history(search="coffee*")] == [coffee, tea]
        assert [r.id for r in store.history(search="not:coffee")] == [tea]  # no column filter: the phrase "not coffee"
        # no letter or digit at all: a substring search (the index holds no punctuation)
        store.add(make_record(2, text="what?!"))
        assert [r.text for r in store.history(search="?!")] == ["what?!"]


def test_without_fts5_search_falls_back_to_substrings_and_the_index_is_rebuilt_later(db, monkeypatch):
    with Store(db) as store:
        first = store.add(make_record(0, text="Café one"))
    monkeypatch.setattr(storage, "has_fts5", lambda db: False)
    with Store(db) as store:
        assert not store.full_text
        second = store.add(make_record(1, text="50% off_sale café"))  # writes work: the triggers are gone
        assert [r.id for r in store.history(search="% off_")] == [second]  # LIKE, wildcards literal
        assert store.history(search="5_") == []
        assert [r.id for r in store.history(search="caf")] == [second, first]
    monkeypatch.undo()
    with Store(db) as store:  # FTS5 again: rebuilt from every row, those written without it too
        assert store.full_text
        assert [r.id for r in store.history(search="cafe")] == [second, first]
        store.delete([first])
        assert [r.id for r in store.history(search="cafe")] == [second]


def test_delete_returns_the_rows_and_restore_puts_them_back_with_their_ids(db):
    with Store(db) as store:
        ids = [store.add(make_record(i, text=f"draft number {i}")) for i in range(4)]
        store.set_favorite(ids[1], True)
        before = store.history()
        deleted = store.delete([ids[2], ids[1], ids[2]])
        assert [r.id for r in deleted] == [ids[1], ids[2]] and deleted[0].favorite
        assert [r.id for r in store.history()] == [ids[3], ids[0]]
        assert store.history(search="number 2") == []  # gone from the index too
        with pytest.raises(StoreError, match=rf"^{db}: no generation with id {ids[1]}, 99 \(nothing deleted\)$"):
            store.delete([ids[0], ids[1], 99])
        assert [r.id for r in store.history()] == [ids[3], ids[0]]  # all or nothing
        store.restore(deleted)
    with Store(db) as store:
        assert store.history() == before  # every field, favorite and time included
        assert [r.id for r in store.history(search="number 2")] == [ids[2]]
        new_id = store.add(make_record(9))
        assert new_id > ids[3]  # ids only grow: a restored id can never clash with a new row


def test_prune_deletes_old_unfavorited_rows_only(db):
    now = datetime.now(timezone.utc)

    def at(days_ago):
        return (now - timedelta(days=days_ago)).isoformat(timespec="seconds")

    with Store(db) as store:
        old = store.add(make_record(0, created_at=at(40)))
        old_favorite = store.add(make_record(1, created_at=at(40), favorite=True))
        recent = store.add(make_record(2, created_at=at(5)))
        pruned = store.prune(30)
        assert [r.id for r in pruned] == [old]
        assert store.prune(30) == []
        assert [r.id for r in store.prune(0.5)] == [recent]
    with Store(db) as store:
        assert [r.id for r in store.history()] == [old_favorite]


def test_conversations_round_trip_and_continue(db):
    with Store(db) as store:
        plain = store.add(make_record(0, system_prompt="", text="first draft"))
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "prompt 0"},
                    {"role": "assistant", "content": "first draft"}, {"role": "user", "content": "shorter, ünïcode"}]
        reply = store.add(make_record(1, prompt="shorter, ünïcode", text="draft", persona="zippy", parent_id=plain,
                                      messages=messages, prefill="dra"))
        with_system = store.add(make_record(2, text="x"))
    with Store(db) as store:
        got = store.get(reply)
        assert (got.persona, got.parent_id, got.messages, got.prefill) == ("zippy", plain, messages, "dra")
        assert store.get(plain).messages is None
        assert store.conversation(plain) == [{"role": "user", "content": "prompt 0"},
                                             {"role": "assistant", "content": "first draft"}]
        assert store.conversation(with_system) == [{"role": "system", "content": "be brief"},
                                                   {"role": "user", "content": "prompt 2"},
                                                   {"role": "assistant", "content": "x"}]
        assert store.conversation(reply) == [*messages, {"role": "assistant", "content": "draft"}]
        with pytest.raises(StoreError, match=rf"^{db}: no generation with id 77$"):
            store.conversation(77)


def _schema_3_file(db) -> None:
    """A history as bobby-tui wrote it at schema version 3 (version 1's SQL, then the released steps 2 and 3)."""
    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db, isolation_level=None)
    con.executescript(SCHEMA_1_SQL)
    for step in MIGRATIONS[1:3]:
        step(con)
    con.execute("PRAGMA user_version = 3")
    con.close()


def test_a_database_at_schema_3_is_upgraded_searchable_and_keeps_its_rows(db):
    _schema_3_file(db)
    with Store(db) as store:
        newer, old = store.history()
        assert (old.text, old.attempt_seed, old.persona, old.parent_id, old.messages, old.prefill) == (
            "old text", 7, None, None, None, None)
        assert [r.id for r in store.history(search="OLD")] == [old.id]  # the index was built from the old rows
        new_id = store.add(make_record(3, persona="p", messages=[{"role": "user", "content": "hi"}]))
        assert store.get(new_id).messages == [{"role": "user", "content": "hi"}]
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    con.close()


def test_a_read_only_database_at_schema_3_still_lists(db, monkeypatch):
    _schema_3_file(db)
    monkeypatch.setattr(storage.os, "access", lambda path, mode: mode != os.W_OK)
    with Store(db) as store:
        assert store.read_only
        assert [r.prompt for r in store.history()] == ["newer prompt", "old prompt"]
        assert store.get(1).persona is None
        assert [r.prompt for r in store.history(search="old")] == ["old prompt"]  # no index in it: substrings
