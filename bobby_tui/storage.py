"""Generation history in SQLite: one committed row per draft, safe with several app instances at once."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path


@dataclass
class GenerationRecord:
    prompt: str
    text: str
    temperature: float
    top_p: float
    seed: int
    model: str
    adapter: str | None
    prompt_tokens: int
    generated_tokens: int
    decode_tok_s: float
    prefill_tok_s: float
    finish_reason: str
    system_prompt: str = ""
    raw_text: str = ""
    # the seed of the attempt that produced `text` (seed is the draft's own); None: seed
    attempt_seed: int | None = None
    attempts: int = 1  # generations it took (a too-short draft is regenerated)
    persona: str | None = None  # the [personas.NAME] it was drafted with
    parent_id: int | None = None  # the history row whose conversation this draft continues (refines)
    messages: list[dict] | None = None  # the conversation before this draft's reply (roles and contents); None: a
    # plain prompt (system_prompt and prompt say it all)
    prefill: str | None = None  # the text the reply was made to start with (the draft's text includes it)
    id: int | None = None
    created_at: str | None = None
    favorite: bool = False


class StoreError(Exception):
    """The history database cannot be used. The message is one line naming the db file."""


# Version 1's tables, as the first bobby-tui wrote them (it kept its version in a `schema_version` table).
_SCHEMA_1 = """
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
"""


def _version_in_pragma(db: sqlite3.Connection) -> None:
    """Version 2: the version lives in SQLite's own header field (PRAGMA user_version), which a foreign file
    cannot carry by accident under our number, instead of a table of ours."""
    db.execute("DROP TABLE IF EXISTS schema_version")


Migration = Callable[[sqlite3.Connection], None]


def _script(sql: str) -> Migration:
    def run(db: sqlite3.Connection) -> None:
        for statement in filter(str.strip, sql.split(";")):
            db.execute(statement)

    return run


# MIGRATIONS[n] upgrades a database at version n to version n + 1, inside the migrating transaction; a step is
# SQL or Python. Append new steps, never edit a released one.
# Version 3: a regenerated draft keeps the user's seed in `seed`; the seed that produced the text is attempt_seed.
# Older rows hold the producing seed in `seed`, so it is copied.
_SEEDS_OF_ATTEMPTS = """
    ALTER TABLE generations ADD COLUMN attempt_seed INTEGER;
    ALTER TABLE generations ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
    UPDATE generations SET attempt_seed = seed
"""
# Version 4: drafts that continue a conversation (refinements, replies with a prefilled start) and personas.
_CONVERSATIONS = """
    ALTER TABLE generations ADD COLUMN persona TEXT;
    ALTER TABLE generations ADD COLUMN parent_id INTEGER;
    ALTER TABLE generations ADD COLUMN messages TEXT;
    ALTER TABLE generations ADD COLUMN prefill TEXT
"""


def _full_text_index(db: sqlite3.Connection) -> None:
    """Version 5: full-text search over prompt and text (see _sync_full_text)."""
    _sync_full_text(db)


MIGRATIONS: list[Migration] = [
    _script(_SCHEMA_1), _version_in_pragma, _script(_SEEDS_OF_ATTEMPTS), _script(_CONVERSATIONS), _full_text_index,
]
SCHEMA_VERSION = len(MIGRATIONS)

# The full-text index: an FTS5 table over the rows' prompt and text (external content: the text is stored once, in
# `generations`), kept in step by triggers. unicode61 with remove_diacritics 2 folds case and accents ("Cafe" finds
# "café").
_FTS_TABLE = "generations_fts"
_FTS_SCHEMA = (
    f"""CREATE VIRTUAL TABLE {_FTS_TABLE} USING fts5(
        prompt, text, content='generations', content_rowid='id', tokenize='unicode61 remove_diacritics 2')""",
    f"""CREATE TRIGGER generations_fts_insert AFTER INSERT ON generations BEGIN
        INSERT INTO {_FTS_TABLE} (rowid, prompt, text) VALUES (new.id, new.prompt, new.text);
    END""",
    f"""CREATE TRIGGER generations_fts_delete AFTER DELETE ON generations BEGIN
        INSERT INTO {_FTS_TABLE} ({_FTS_TABLE}, rowid, prompt, text) VALUES ('delete', old.id, old.prompt, old.text);
    END""",
    f"""CREATE TRIGGER generations_fts_update AFTER UPDATE OF prompt, text ON generations BEGIN
        INSERT INTO {_FTS_TABLE} ({_FTS_TABLE}, rowid, prompt, text) VALUES ('delete', old.id, old.prompt, old.text);
        INSERT INTO {_FTS_TABLE} (rowid, prompt, text) VALUES (new.id, new.prompt, new.text);
    END""",
    f"INSERT INTO {_FTS_TABLE} ({_FTS_TABLE}) VALUES ('rebuild')",
)
_FTS_TRIGGERS = ("generations_fts_insert", "generations_fts_delete", "generations_fts_update")


def _full_text_ready(db: sqlite3.Connection) -> bool:
    """Whether searches can use the full-text index: FTS5 in this build, and the index with all its triggers."""
    names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")}
    return has_fts5(db) and {_FTS_TABLE, *_FTS_TRIGGERS} <= names


def has_fts5(db: sqlite3.Connection) -> bool:
    """Whether this SQLite build has the FTS5 extension (nearly all do; some minimal builds leave it out)."""
    return bool(db.execute("SELECT sqlite_compileoption_used('ENABLE_FTS5')").fetchone()[0])


def _sync_full_text(db: sqlite3.Connection) -> None:
    """Make the full-text index fit this SQLite build: built (from every row) where FTS5 exists; where it does not,
    its triggers are dropped, since they would make every write fail (the index is rebuilt on a build with FTS5).
    Runs in the opening transaction, so a history moved between machines stays writable on both."""
    names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")}
    triggers = [t for t in _FTS_TRIGGERS if t in names]
    if not has_fts5(db):
        for trigger in triggers:
            db.execute(f"DROP TRIGGER {trigger}")
        return
    if _FTS_TABLE in names and len(triggers) == len(_FTS_TRIGGERS):
        return
    for trigger in triggers:
        db.execute(f"DROP TRIGGER {trigger}")
    db.execute(f"DROP TABLE IF EXISTS {_FTS_TABLE}")
    for statement in _FTS_SCHEMA:
        db.execute(statement)


_SQLITE_MAGIC = b"SQLite format 3\x00"
# How long a writer waits for another instance's transaction; ours are a single INSERT/UPDATE each.
_BUSY_TIMEOUT_S = 10.0
_COLUMNS = [f.name for f in dataclasses.fields(GenerationRecord) if f.name != "id"]
_OUR_TABLES = {"generations", "schema_version", "sqlite_sequence"}


class Store:
    """The history database at `db_path`, created or upgraded on open. A database this user cannot write is
    opened read-only: it lists, and `add` / `set_favorite` raise StoreError."""

    def __init__(self, db_path: Path):
        self.path = Path(db_path)
        self._lock = threading.Lock()  # one connection, usable from the app's threads one at a time
        self._columns = _COLUMNS  # a read-only file of an older version may have fewer
        self._refuse_foreign_file()
        self.read_only = self.path.exists() and not os.access(self.path, os.W_OK)
        self._db = self._connect()
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            if self.read_only:
                self._check_readable_version()
            else:
                self._migrate()
                # only once the file is known to be ours: WAL changes the file's header
                self._db.execute("PRAGMA journal_mode = WAL")
            # False: searches match substrings (SQLite's LIKE), as this SQLite build has no FTS5
            self.full_text = _full_text_ready(self._db)
            self._identity = self._file_identity()
        except StoreError:
            self._db.close()
            raise
        except sqlite3.Error as err:
            self._db.close()
            raise StoreError(f"{self.path}: {_describe(err)}") from None

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.read_only:
                # a WAL database in a directory we cannot write has no -shm to share: read it as an immutable file
                mode = "ro" if os.access(self.path.parent, os.W_OK) else "ro&immutable=1"
                uri = f"{self.path.resolve().as_uri()}?mode={mode}"
                return sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT_S, isolation_level=None,
                                       check_same_thread=False)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit mode: every statement outside an explicit BEGIN commits at once, so a killed
            # process loses at most the row it was writing
            return sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as err:
            raise StoreError(f"{self.path}: cannot open the history database: {err}") from None

    def _refuse_foreign_file(self) -> None:
        """A file that is not SQLite is someone's data: refuse it before SQLite could touch it."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except FileNotFoundError:
            return
        except OSError as err:
            raise StoreError(f"{self.path}: cannot read the history database: {err.strerror}") from None
        if head and head != _SQLITE_MAGIC:
            raise StoreError(
                f"{self.path}: not a SQLite database (left untouched; move it away to start a new history)")

    def _version(self) -> int:
        """The schema version of the open file; StoreError for a SQLite file that is not a bobby-tui history."""
        db = self._db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == 0 and tables:
            if "schema_version" in tables and "generations" in tables and tables <= _OUR_TABLES:
                (version,) = db.execute("SELECT version FROM schema_version").fetchone() or (0,)
            else:
                raise StoreError(
                    f"{self.path}: a SQLite database of another program (tables: {', '.join(sorted(tables))}); "
                    "left untouched: move it away or point bobby-tui elsewhere"
                )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: history schema version {version} is newer than this bobby-tui knows "
                f"({SCHEMA_VERSION}); upgrade bobby-tui"
            )
        return version

    def _check_readable_version(self) -> None:
        version = self._version()
        if version == 0:
            raise StoreError(f"{self.path}: the history database is read-only and holds no history yet")
        # Versions before 4 lack some columns: they read as their defaults
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(generations)")}
        self._columns = [c for c in _COLUMNS if c in columns]

    def _migrate(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # one instance migrates; the others wait, then see the new version
        try:
            version = self._version()
            for step in MIGRATIONS[version:]:
                step(db)
            if version == SCHEMA_VERSION:
                _sync_full_text(db)  # a file last opened by a SQLite with(out) FTS5
            if version != SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_dev, info.st_ino

    def _check_writable(self) -> None:
        """Refuse a write that would be lost: to a read-only file, or to a database file removed or replaced since
        it was opened (SQLite would go on writing to the deleted file)."""
        if self.read_only:
            raise StoreError(f"{self.path}: the history database is read-only")
        if self._file_identity() != self._identity:
            raise StoreError(f"{self.path}: the history database was removed or replaced while in use")

    @contextlib.contextmanager
    def _guard(self) -> Iterator[sqlite3.Connection]:
        """The connection, held by this thread, with SQLite errors turned into one-line StoreErrors."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as err:
                raise StoreError(f"{self.path}: {_describe(err)}") from None
            except (OverflowError, UnicodeEncodeError) as err:  # a value SQLite cannot store: an int past 64 bits,
                # a lone surrogate in a string
                raise StoreError(f"{self.path}: a value the history database cannot store ({err})") from None

    def add(self, rec: GenerationRecord) -> int:
        """Store `rec` (committed before returning) and return its id."""
        self._check_writable()
        with self._guard() as db:
            return self._insert(db, rec, with_id=False)

    def _insert(self, db: sqlite3.Connection, rec: GenerationRecord, with_id: bool) -> int:
        values = dataclasses.asdict(rec)
        values["created_at"] = rec.created_at or datetime.now(timezone.utc).isoformat(timespec="seconds")
        values["favorite"] = int(rec.favorite)
        values["messages"] = None if rec.messages is None else json.dumps(rec.messages, ensure_ascii=False)
        columns = ["id", *_COLUMNS] if with_id else _COLUMNS
        cursor = db.execute(
            f"INSERT INTO generations ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
            tuple(values[c] for c in columns),
        )
        return cursor.lastrowid

    def set_favorite(self, gen_id: int, favorite: bool) -> None:
        self._check_writable()
        with self._guard() as db:
            cursor = db.execute("UPDATE generations SET favorite = ? WHERE id = ?", (int(favorite), gen_id))
        if cursor.rowcount == 0:
            raise StoreError(f"{self.path}: no generation with id {gen_id}")

    def delete(self, ids: list[int]) -> list[GenerationRecord]:
        """Delete the rows `ids`, all or none: an id with no row raises StoreError (naming it) and nothing is
        deleted. Returns the deleted rows, oldest first, for `restore` (undo)."""
        self._check_writable()
        ids = list(dict.fromkeys(ids))
        with self._guard() as db, self._transaction(db):
            records = self._select_locked(db, f"WHERE id IN ({', '.join('?' for _ in ids)}) ORDER BY id", tuple(ids))
            missing = sorted(set(ids) - {r.id for r in records})
            if missing:
                raise StoreError(f"{self.path}: no generation with id {', '.join(map(str, missing))} (nothing deleted)")
            self._delete_rows(db, records)
        return records

    def prune(self, older_than_days: float) -> list[GenerationRecord]:
        """Delete every row that is not a favorite and is older than `older_than_days` days; return them."""
        self._check_writable()
        cutoff = datetime.now(timezone.utc) - timedelta(days=older_than_days)
        with self._guard() as db, self._transaction(db):
            # the stored times are ISO 8601 in UTC, all of one width: they compare as text
            records = self._select_locked(db, "WHERE favorite = 0 AND created_at < ? ORDER BY id",
                                          (cutoff.isoformat(timespec="seconds"),))
            self._delete_rows(db, records)
        return records

    def restore(self, records: list[GenerationRecord]) -> None:
        """Put deleted rows back, with their ids (never reused meanwhile: ids only grow), all or none."""
        self._check_writable()
        with self._guard() as db, self._transaction(db):
            for rec in records:
                self._insert(db, rec, with_id=True)

    @staticmethod
    def _delete_rows(db: sqlite3.Connection, records: list[GenerationRecord]) -> None:
        db.executemany("DELETE FROM generations WHERE id = ?", [(r.id,) for r in records])

    @staticmethod
    @contextlib.contextmanager
    def _transaction(db: sqlite3.Connection) -> Iterator[None]:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def get(self, gen_id: int) -> GenerationRecord | None:
        rows = self._select("WHERE id = ?", (gen_id,))
        return rows[0] if rows else None

    def conversation(self, gen_id: int) -> list[dict]:
        """The messages row `gen_id` ended: the conversation before its reply (for a plain prompt: the system
        prompt, if any, and the prompt), then its text as the assistant's turn. StoreError when there is no row."""
        rec = self.get(gen_id)
        if rec is None:
            raise StoreError(f"{self.path}: no generation with id {gen_id}")
        if rec.messages is not None:
            before = rec.messages
        else:
            system = [{"role": "system", "content": rec.system_prompt}] if rec.system_prompt else []
            before = [*system, {"role": "user", "content": rec.prompt}]
        return [*before, {"role": "assistant", "content": rec.text}]

    def history(
        self, limit: int = 100, favorites_only: bool = False, search: str | None = None
    ) -> list[GenerationRecord]:
        """Newest first; a negative `limit` means all. `search`: rows whose prompt or text hold every word of it,
        whole or as a word's start, ignoring case and accents (the full-text index); where SQLite has no FTS5
        (`full_text` False), rows whose text or prompt hold it as a substring, ignoring ASCII case."""
        clauses, params = [], []
        if favorites_only:
            clauses.append("favorite = 1")
        if search:
            query = _full_text_query(search) if self.full_text else None
            if query is not None:
                clauses.append(f"id IN (SELECT rowid FROM {_FTS_TABLE} WHERE {_FTS_TABLE} MATCH ?)")
                params.append(query)
            else:
                pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                clauses.append("(text LIKE ? ESCAPE '\\' OR prompt LIKE ? ESCAPE '\\')")
                params += [pattern, pattern]
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        return self._select(f"{where} ORDER BY id DESC LIMIT ?", (*params, limit))

    def _select(self, tail: str, params: tuple) -> list[GenerationRecord]:
        with self._guard() as db:
            return self._select_locked(db, tail, params)

    def _select_locked(self, db: sqlite3.Connection, tail: str, params: tuple) -> list[GenerationRecord]:
        rows = db.execute(f"SELECT id, {', '.join(self._columns)} FROM generations {tail}", params).fetchall()
        return [_record(dict(zip(["id", *self._columns], row, strict=True))) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _record(values: dict) -> GenerationRecord:
    values["favorite"] = bool(values["favorite"])
    values["messages"] = _messages(values.get("messages"))
    return GenerationRecord(**values)


def _messages(stored: object) -> list[dict] | None:
    """The stored JSON of a row's conversation; None for a plain prompt, or a value that is no list of messages."""
    if not isinstance(stored, str):
        return None
    try:
        messages = json.loads(stored)
    except ValueError:
        return None
    return messages if isinstance(messages, list) and all(isinstance(m, dict) for m in messages) else None


# A word of a search: any run of non-space characters, FTS5 syntax included ("NOT", "a*", "col:x", '"').
_SEARCH_WORD = re.compile(r"\S+")


def _full_text_query(search: str) -> str | None:
    """An FTS5 query for `search`: each word a quoted string (so FTS5 syntax in it is literal) matching as a prefix,
    all required. None when no word holds a letter or digit (the index has no punctuation): search substrings."""
    words = [w for w in _SEARCH_WORD.findall(search) if any(c.isalnum() for c in w)]
    if not words:
        return None
    return " ".join('"' + w.replace('"', '""') + '"*' for w in words)


def _describe(err: sqlite3.Error) -> str:
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "not a database" in message or "malformed" in message:
        return f"the history database is corrupt ({message}; left untouched)"
    return message
