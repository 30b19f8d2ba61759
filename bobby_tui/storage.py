"""Generation history in SQLite: one committed row per draft, safe with several app instances at once."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator


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


# Each entry upgrades the schema by one version; the list index + 1 is the version it reaches.
# Append new migrations, never edit a released one.
MIGRATIONS: list[str] = [
    """
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
    """,
    # A regenerated draft keeps its own seed in `seed`; the seed that produced the text moves to attempt_seed.
    # Older rows hold the producing seed in `seed`, so it is copied.
    """
    ALTER TABLE generations ADD COLUMN attempt_seed INTEGER;
    ALTER TABLE generations ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
    UPDATE generations SET attempt_seed = seed;
    """,
]

_SQLITE_MAGIC = b"SQLite format 3\x00"
# How long a writer waits for another instance's transaction; ours are a single INSERT/UPDATE each.
_BUSY_TIMEOUT_S = 10.0
_COLUMNS = [f.name for f in dataclasses.fields(GenerationRecord) if f.name != "id"]


class Store:
    def __init__(self, db_path: Path):
        self.path = Path(db_path)
        self._lock = threading.Lock()  # one connection, usable from the app's threads one at a time
        self._refuse_foreign_file()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit mode: every statement outside an explicit BEGIN commits at once, so a killed
            # process loses at most the row it was writing
            self._db = sqlite3.connect(
                self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as err:
            raise StoreError(f"{self.path}: cannot open the history database: {err}") from None
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._migrate()
        except sqlite3.Error as err:
            self._db.close()
            raise StoreError(f"{self.path}: {_describe(err)}") from None

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

    def _migrate(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # one instance migrates; the others wait, then see the new version
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"{self.path}: history schema version {version} is newer than this bobby-tui knows "
                    f"({len(MIGRATIONS)}); upgrade bobby-tui"
                )
            for script in MIGRATIONS[version:]:
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
            if row is None:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (len(MIGRATIONS),))
            else:
                db.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _guard(self) -> Iterator[sqlite3.Connection]:
        """The connection, held by this thread, with SQLite errors turned into one-line StoreErrors."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as err:
                raise StoreError(f"{self.path}: {_describe(err)}") from None

    def add(self, rec: GenerationRecord) -> int:
        """Store `rec` (committed before returning) and return its id."""
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

    def __enter__(self) -> "Store":
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
