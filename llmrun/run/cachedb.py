"""The call cache's file: an SQLite database in WAL mode, used from one thread at a time.

One table, ``entries``: the SHA-256 of a request (see ``cache.py``) -> the reply as JSON, with
its size and when it was stored and last used. WAL mode lets several runs (processes) read while
one writes, and a process killed at any instant leaves a database that opens as it was after the
last committed batch (SQLite rolls back the rest). ``synchronous=NORMAL``: a power loss may lose
the last batches, which only means calling them again; a kill loses nothing committed.

Bounded by ``max_bytes``: after each write, when the pages in use exceed the bound, the least
recently used entries go until they fill at most ``EVICT_TO`` of it, and the freed pages are
given back to the file system (``auto_vacuum=INCREMENTAL``), so the file itself stays under the
bound (the write-ahead log beside it is kept under ``WAL_LIMIT`` after each checkpoint).

Nothing here is async: ``cache.CallCache`` calls it off the event loop.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import LlmrunError

FORMAT = "llmrun-cache/1"
EVICT_TO = 0.9  # eviction frees down to this share of the bound, so it does not run per write
WAL_LIMIT = 4 * 1024 * 1024
BUSY_TIMEOUT_MS = 30_000  # another run's write transaction: wait for it this long at most
EVICT_CHUNK = 2000  # entries looked at per round of eviction
IN_CHUNK = 500  # keys per SELECT ... IN (...), under SQLite's variable limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    key BLOB NOT NULL UNIQUE,
    used REAL NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    reply TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_used ON entries (used);
"""


class CacheError(LlmrunError):
    """The cache file cannot be opened or is not an llmrun cache."""


@dataclass(slots=True)
class CacheStats:
    path: str
    entries: int
    data_bytes: int  # the replies' JSON
    file_bytes: int  # the database and its write-ahead log on disk
    oldest_use: float | None  # time.time() of the least recently used entry
    newest_use: float | None

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "entries": self.entries,
            "data_bytes": self.data_bytes,
            "file_bytes": self.file_bytes,
            "oldest_use": self.oldest_use,
            "newest_use": self.newest_use,
        }


class CacheDB:
    """One connection to a cache file. Not thread-safe: its owner serialises the calls."""

    def __init__(self, path: Path, *, max_bytes: int | None = None, create: bool = True) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._vacuum = False  # eviction freed pages: give them back after the transaction
        if create:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CacheError(f"cannot create the cache {path}: {exc.strerror or exc}") from None
        elif not path.is_file():
            raise CacheError(f"no cache at {path}")
        try:
            # check_same_thread off: the owner calls from worker threads, one call at a time.
            self._db = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise CacheError(f"cannot open the cache {path}: {exc}") from None
        try:
            self._setup()
        except sqlite3.Error as exc:
            self._db.close()
            raise CacheError(f"cannot use {path} as a cache: {exc}") from None
        except CacheError:
            self._db.close()
            raise

    def _setup(self) -> None:
        db = self._db
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            # Someone else's database: never add tables to it, never evict from it.
            raise CacheError(f"{self.path} is a database, but not an llmrun cache")
        if not tables:
            # Must precede the first table; WAL mode persists in the file once set.
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise CacheError(f"cannot use {self.path} as a cache: WAL mode refused ({mode})")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
        db.execute("BEGIN IMMEDIATE")  # two runs creating the file at once: one at a time
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta (name, value) VALUES ('format', ?)", (FORMAT,))
            elif row[0] != FORMAT:
                raise CacheError(
                    f"{self.path} is a cache of another format ({row[0]!r}, this llmrun reads "
                    f"{FORMAT!r}): give another path, or delete it"
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- the hot path (one call per batch of lookups and stores) ------------------------------

    def exchange(
        self, gets: Sequence[bytes], puts: Sequence[tuple[bytes, str]], now: float
    ) -> dict[bytes, str]:
        """One batch: the stored replies of those ``gets`` that are in the cache (marked used
        now), then ``puts`` stored (replacing any under the same key) and the bound kept, in
        one write transaction."""
        found: dict[bytes, str] = {}
        for start in range(0, len(gets), IN_CHUNK):
            chunk = gets[start : start + IN_CHUNK]
            marks = ",".join("?" * len(chunk))  # the only text formatted into the query
            rows = self._db.execute(f"SELECT key, reply FROM entries WHERE key IN ({marks})", chunk)
            found.update((bytes(k), str(v)) for k, v in rows)
        if not found and not puts:
            return found
        stored = [(key, now, now, len(reply.encode("utf-8")), reply) for key, reply in puts]

        def write() -> None:
            if found:
                self._db.executemany(
                    "UPDATE entries SET used = ? WHERE key = ?", [(now, k) for k in found]
                )
            if stored:
                self._db.executemany(
                    "INSERT INTO entries (key, used, created, size, reply) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET used = excluded.used, "
                    "created = excluded.created, size = excluded.size, reply = excluded.reply",
                    stored,
                )
                if self.max_bytes is not None:
                    self._evict(self.max_bytes)

        self._write(write)
        return found

    def _write(self, work: Callable[[], None]) -> None:
        """Run ``work`` in one write transaction (waiting up to the busy timeout for another
        process's)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            work()
            self._db.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (a full disk): keep the first error.
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            self._vacuum = False
            raise
        self._give_back()

    # -- the bound --------------------------------------------------------------------------

    def _pages_in_use(self) -> int:
        """Bytes of the database's pages that hold data (the file less its free pages)."""
        db = self._db
        page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        pages = int(db.execute("PRAGMA page_count").fetchone()[0])
        free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * page_size

    def _evict(self, max_bytes: int, *, older_than: float | None = None) -> int:
        """Inside a write transaction: delete entries unused since ``older_than``, then the least
        recently used until the pages in use fit ``EVICT_TO`` of the bound (they are over
        it), and give the freed pages back. The number of entries deleted."""
        db = self._db
        deleted = 0
        if older_than is not None:
            deleted += db.execute("DELETE FROM entries WHERE used < ?", (older_than,)).rowcount
        in_use = self._pages_in_use()
        if in_use > max_bytes:
            target = int(max_bytes * EVICT_TO)
            # Pages hold more than the replies (keys, index, slack): scale what to delete by the
            # ratio of the two, and check again, as the estimate may fall short.
            while True:
                data = int(db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0])
                if data == 0 or in_use <= target:
                    break
                need = max(1, int((in_use - target) * data / in_use))
                ids: list[int] = []
                freed = 0
                oldest = db.execute(
                    "SELECT id, size FROM entries ORDER BY used, id LIMIT ?", (EVICT_CHUNK,)
                ).fetchall()
                for row_id, size in oldest:
                    ids.append(int(row_id))
                    freed += int(size)
                    if freed >= need:
                        break
                db.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in ids])
                deleted += len(ids)
                in_use = self._pages_in_use()
        self._vacuum = self._vacuum or deleted > 0
        return deleted

    def _give_back(self) -> None:
        """Outside a transaction: return the free pages eviction left to the file system."""
        if self._vacuum:
            self._vacuum = False
            # executescript steps the pragma to its end (execute would free a single page).
            self._db.executescript("PRAGMA incremental_vacuum;")

    # -- commands ---------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(used), MAX(used) FROM entries"
        ).fetchone()
        file_bytes = sum(
            p.stat().st_size
            for p in (self.path, self.path.with_name(self.path.name + "-wal"))
            if p.exists()
        )
        return CacheStats(str(self.path), int(row[0]), int(row[1]), file_bytes, row[2], row[3])

    def prune(self, *, max_bytes: int | None, older_than: float | None) -> int:
        """Delete entries unused since ``older_than`` and evict down to ``max_bytes``; return
        the file's free space to the file system. The number of entries deleted."""
        deleted = 0

        def work() -> None:
            nonlocal deleted
            bound = max_bytes if max_bytes is not None else 2**62
            deleted = self._evict(bound, older_than=older_than)

        self._write(work)
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    def close(self) -> None:
        self._db.close()
