"""Generation history in SQLite: one committed row per draft, safe with several app instances at once."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
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
    attempt_seed: int | None = None  # the seed of the attempt that produced `text` (seed is the draft's own); None: seed
    attempts: int = 1  # generations it took (a too-short draft is regenerated)
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
MIGRATIONS: list[Migration] = [_script(_SCHEMA_1), _version_in_pragma, _script(_SEEDS_OF_ATTEMPTS)]
SCHEMA_VERSION = len(MIGRATIONS)

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
            raise StoreError(f"{self.path}: not a SQLite database (left untouched; move it away to start a new history)")

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
        # Every version so far has the same `generations` columns, so a read-only file of any version lists as is.
        if self._version() == 0:
            raise StoreError(f"{self.path}: the history database is read-only and holds no history yet")

    def _migrate(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # one instance migrates; the others wait, then see the new version
        try:
            version = self._version()
            for step in MIGRATIONS[version:]:
                step(db)
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
        values = dataclasses.asdict(rec)
        values["created_at"] = rec.created_at or datetime.now(timezone.utc).isoformat(timespec="seconds")
        values["favorite"] = int(rec.favorite)
        placeholders = ", ".join("?" for _ in _COLUMNS)
        with self._guard() as db:
            cursor = db.execute(
                f"INSERT INTO generations ({', '.join(_COLUMNS)}) VALUES ({placeholders})",
                tuple(values[c] for c in _COLUMNS),
            )
        return cursor.lastrowid

    def set_favorite(self, gen_id: int, favorite: bool) -> None:
        self._check_writable()
        with self._guard() as db:
            cursor = db.execute("UPDATE generations SET favorite = ? WHERE id = ?", (int(favorite), gen_id))
        if cursor.rowcount == 0:
            raise StoreError(f"{self.path}: no generation with id {gen_id}")

    def get(self, gen_id: int) -> GenerationRecord | None:
        rows = self._select("WHERE id = ?", (gen_id,))
        return rows[0] if rows else None

    def history(self, limit: int = 100, favorites_only: bool = False, search: str | None = None) -> list[GenerationRecord]:
        """Newest first; a negative `limit` means all. `search` matches a substring of the text or the prompt,
        case-insensitively (ASCII letters: SQLite's LIKE)."""
        clauses, params = [], []
        if favorites_only:
            clauses.append("favorite = 1")
        if search:
            pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            clauses.append("(text LIKE ? ESCAPE '\\' OR prompt LIKE ? ESCAPE '\\')")
            params += [pattern, pattern]
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        return self._select(f"{where} ORDER BY id DESC LIMIT ?", (*params, limit))

    def _select(self, tail: str, params: tuple) -> list[GenerationRecord]:
        with self._guard() as db:
            rows = db.execute(f"SELECT id, {', '.join(_COLUMNS)} FROM generations {tail}", params).fetchall()
        return [_record(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _record(row: tuple) -> GenerationRecord:
    values = dict(zip(["id", *_COLUMNS], row))
    values["favorite"] = bool(values["favorite"])
    return GenerationRecord(**values)


def _describe(err: sqlite3.Error) -> str:
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "not a database" in message or "malformed" in message:
        return f"the history database is corrupt ({message}; left untouched)"
    return message
