"""The outbox's SQLite file: the ledger of runs, the queue of callbacks, the tombstones.

Every run this node accepts is in exactly one of three places, and moves between them in one
transaction each: the ledger while it runs ("running"), the queue while its result waits for
the scheduler ("reporting"), the tombstones once the scheduler acknowledged the result ("done",
kept for PYTHON_SANDBOX_TOMBSTONE_SECS). An id found in any of them is never run again.

Bodies are stored zlib-compressed, the file reclaims freed pages (incremental vacuum) and its
write-ahead log is truncated when the queue empties, so it stays small on disk.
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, script_id INTEGER NOT NULL, kind TEXT NOT NULL,
    body TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_script ON outbox (script_id, id);
CREATE TABLE IF NOT EXISTS ledger (
    script_id INTEGER PRIMARY KEY, container TEXT NOT NULL DEFAULT '', accepted_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tombstone (script_id INTEGER PRIMARY KEY, done_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS tombstone_done ON tombstone (done_at);
"""
# The run's callback secret (issued by the dispatcher at hand-off): on the ledger while the run runs, copied
# onto each of its queued callbacks. Added to files of older versions at open.
_SECRET_COLUMNS = ("ledger", "outbox")
RESULT_KINDS = ("result", "result_minimal")  # the minimal one replaces a result the scheduler refused
RECLAIM_PAGES = 256  # free pages (1 MiB at 4 KiB) worth giving back to the file system
WAL_LIMIT = 1 << 20  # the write-ahead log is cut back to this after a checkpoint
COMPRESSION_LEVEL = 6


@dataclass(frozen=True)
class InFlight:
    """A run the service accepted and has not yet queued a result for."""

    script_id: int
    container: str  # container name, may be "" before creation
    accepted_at: float


@dataclass(frozen=True)
class Entry:
    """A queued callback, without its body (loaded only when it is sent)."""

    id: int
    script_id: int
    kind: str
    attempts: int
    next_at: float
    secret: str = ""  # the run's callback secret; "" for runs accepted before secrets existed


def pack(body: bytes) -> bytes:
    return zlib.compress(body, COMPRESSION_LEVEL)


def unpack(stored: bytes | str) -> bytes:
    """A stored body; plain JSON text is what files written before compression hold."""
    return stored.encode() if isinstance(stored, str) else zlib.decompress(stored)


class OutboxStore:
    """One SQLite file shared by every thread of the service (and safe for a second process)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = pathlib.Path(path)
        self._lock = threading.Lock()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        """Create directory (0700) and file (0600) ourselves so the output in it is never world-readable."""
        if not self.path.parent.exists():
            self.path.parent.mkdir(mode=0o700, parents=True)
            os.chmod(self.path.parent, 0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            # Set before the first table exists; a file from an older version is rebuilt once.
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            if db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
                db.execute("VACUUM")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # durable commits sync the log themselves (_tx, sync)
        db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        db.executescript(_SCHEMA)
        for table in _SECRET_COLUMNS:
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if "secret" not in columns:
                db.execute(f"ALTER TABLE {table} ADD COLUMN secret TEXT NOT NULL DEFAULT ''")
        return db

    @contextmanager
    def _tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction at a time; IMMEDIATE so other processes on the file serialize too.

        Durable ones (a run accepted) reach the disk before this returns: the write-ahead log is synced after the
        commit, as synchronous=FULL would. A result is synced right after its commit (Outbox.result). The rest
        (leases, acknowledgements, a container's name, the running callback) survive the service's crash as well,
        since the log is in the kernel's hands at commit, but not a power cut; an fsync each would cost every run's
        result several milliseconds on its way out. The log is written in order, so the next durable commit makes
        every earlier one durable too, and what a power cut can undo is safe to undo: a callback sent again (the
        scheduler answers it as already taken), a lease that lapses, a container found by its label.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            if durable:
                self.sync()

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- where a run is -------------------------------------------------------------------------

    def accept(self, script_id: int, now: float, secret: str = "") -> bool:
        """Record a new run and its callback secret; False if the id is remembered anywhere (never again)."""
        with self._tx() as db:
            if self._state(db, script_id) is not None:
                return False
            db.execute("INSERT INTO ledger (script_id, accepted_at, secret) VALUES (?, ?, ?)",
                       (script_id, now, secret))
            return True

    def state(self, script_id: int) -> str | None:
        """"running", "reporting", "done", or None: this node has no record of the id."""
        with self._lock:
            return self._state(self._db, script_id)

    @staticmethod
    def _state(db: sqlite3.Connection, script_id: int) -> str | None:
        if db.execute("SELECT 1 FROM ledger WHERE script_id = ?", (script_id,)).fetchone():
            return "running"
        if db.execute("SELECT 1 FROM outbox WHERE script_id = ? LIMIT 1", (script_id,)).fetchone():
            return "reporting"
        if db.execute("SELECT 1 FROM tombstone WHERE script_id = ?", (script_id,)).fetchone():
            return "done"
        return None

    def set_container(self, script_id: int, container: str) -> None:
        with self._tx(durable=False) as db:
            db.execute("UPDATE ledger SET container = ? WHERE script_id = ?", (container, script_id))

    def sync(self) -> None:
        """Make every commit so far survive a power cut: the write-ahead log, where they are, to the disk.

        A checkpoint that moved them into the file first has synced the file (WAL mode does, from NORMAL up)."""
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            fd = os.open(wal, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # checkpointed and removed: in the synced file already
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def in_flight(self) -> list[InFlight]:
        rows = self._query("SELECT script_id, container, accepted_at FROM ledger ORDER BY accepted_at")
        return [InFlight(int(s), str(c), float(a)) for s, c, a in rows]

    def prune_tombstones(self, before: float) -> int:
        with self._tx(durable=False) as db:
            return int(db.execute("DELETE FROM tombstone WHERE done_at < ?", (before,)).rowcount)

    # --- the queue --------------------------------------------------------------------------------

    def enqueue(self, script_id: int, kind: str, packed: bytes, now: float, *, ends_run: bool = False,
                durable: bool | None = None) -> None:
        """Queue a callback; for a result, drop the ledger entry in the same transaction (durably, unless the
        caller makes it durable with sync())."""
        with self._tx(durable=ends_run if durable is None else durable) as db:
            db.execute("INSERT INTO outbox (script_id, kind, body, next_at, created_at, secret) VALUES (?, ?, ?, ?, ?, "
                       "COALESCE((SELECT secret FROM ledger WHERE script_id = ?), ''))",
                       (script_id, kind, packed, now, now, script_id))
            if ends_run:
                db.execute("DELETE FROM ledger WHERE script_id = ?", (script_id,))

    def heads(self) -> list[Entry]:
        """The first queued entry of every script (a script's callbacks go in order), soonest first."""
        rows = self._query(
            "SELECT id, script_id, kind, attempts, next_at, secret FROM outbox"
            " WHERE id IN (SELECT MIN(id) FROM outbox GROUP BY script_id) ORDER BY next_at, id")
        return [Entry(int(i), int(s), str(k), int(a), float(n), str(c or "")) for i, s, k, a, n, c in rows]

    def body(self, entry_id: int) -> bytes | None:
        rows = self._query("SELECT body FROM outbox WHERE id = ?", (entry_id,))
        return unpack(rows[0][0]) if rows else None

    def claim(self, entry: Entry, until: float) -> bool:
        """Push next_at ahead while it is sent, so another process on the same file does not send it too."""
        with self._tx(durable=False) as db:
            cur = db.execute("UPDATE outbox SET next_at = ? WHERE id = ? AND next_at = ?",
                             (until, entry.id, entry.next_at))
            return cur.rowcount == 1

    def acknowledged(self, entry: Entry, now: float) -> None:
        """The scheduler took it: gone from the queue; a result leaves its tombstone."""
        with self._tx(durable=False) as db:
            db.execute("DELETE FROM outbox WHERE id = ?", (entry.id,))
            if entry.kind in RESULT_KINDS:
                db.execute("INSERT OR REPLACE INTO tombstone (script_id, done_at) VALUES (?, ?)",
                           (entry.script_id, now))

    def drop(self, entry: Entry) -> None:
        with self._tx(durable=False) as db:
            db.execute("DELETE FROM outbox WHERE id = ?", (entry.id,))

    def replace(self, entry: Entry, kind: str, packed: bytes, now: float) -> None:
        """Put another body in the entry's place, due now."""
        with self._tx() as db:
            db.execute("UPDATE outbox SET kind = ?, body = ?, attempts = 0, next_at = ? WHERE id = ?",
                       (kind, packed, now, entry.id))

    def postpone(self, entry: Entry, until: float) -> None:
        with self._tx(durable=False) as db:
            db.execute("UPDATE outbox SET attempts = attempts + 1, next_at = ? WHERE id = ?", (until, entry.id))

    def pending(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM outbox")[0][0])

    def oldest_pending(self) -> float | None:
        """When the oldest queued callback was queued (epoch seconds), or None."""
        value = self._query("SELECT MIN(created_at) FROM outbox")[0][0]
        return None if value is None else float(value)

    # --- the file ---------------------------------------------------------------------------------

    def disk_bytes(self) -> int:
        """The file and its write-ahead log, as the file system counts them."""
        total = 0
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def reclaim(self, truncate_log: bool) -> None:
        """Give freed pages back to the file system; cut the log to nothing when asked (queue empty)."""
        with self._lock:
            if self._db.execute("PRAGMA freelist_count").fetchone()[0] >= RECLAIM_PAGES or truncate_log:
                # executescript steps the statement to the end; execute() would free one page only
                self._db.executescript("PRAGMA incremental_vacuum;")
            if truncate_log:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def check_writable(self) -> None:
        """Raise if a write transaction cannot begin (locked, read-only, gone); writes nothing."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("ROLLBACK")

    def close(self) -> None:
        with self._lock:
            self._db.close()
