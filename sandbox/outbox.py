"""Durable outbox for the scheduler callbacks, plus the ledger of runs in flight.

A run's result is the one thing the user sees of it, so it is written to SQLite (WAL, synchronous=FULL)
before any delivery is tried, and retried until the scheduler answers 2xx, across restarts of either side.
The ledger in the same file lets a restarted service end every run it lost with "sandbox lost": a run is
always either in the ledger or has its result queued, because `result()` switches the two in one transaction.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import random
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests

log = logging.getLogger(__name__)

BASE_BACKOFF = 0.5
IDLE_RECHECK = 5.0  # picks up entries queued by another process on the same file
PATHS = {"running": "/script-running-callback/", "result": "/script-result/"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, script_id INTEGER NOT NULL, kind TEXT NOT NULL,
    body TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_script ON outbox (script_id, id);
CREATE TABLE IF NOT EXISTS ledger (
    script_id INTEGER PRIMARY KEY, container TEXT NOT NULL DEFAULT '', accepted_at REAL NOT NULL);
"""


@dataclass(frozen=True)
class InFlight:
    """A run the service accepted and has not yet queued a result for."""

    script_id: int
    container: str  # container name, may be "" before creation
    accepted_at: float


@dataclass
class OutboxStats:
    """Counters since this process started, for /health."""

    delivered: int = 0
    retried: int = 0
    dropped: int = 0
    causes: dict[str, int] = field(default_factory=dict)  # failed attempts by cause, for /metrics

    def failed(self, reason: str) -> None:
        """Count a failed attempt: "HTTP 503" as http_503, "ConnectionError" as connection_error."""
        cause = reason.lower().replace(" ", "_") if reason.startswith("HTTP ") else _snake(reason)
        self.causes[cause] = self.causes.get(cause, 0) + 1


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()[:40]


@dataclass(frozen=True)
class _Entry:
    id: int
    script_id: int
    kind: str
    body: str
    attempts: int


def backoff(attempts: int, cap: float) -> float:
    """Exponential delay, jittered within [d/2, d] so entries failing together do not retry in lockstep."""
    delay = min(cap, BASE_BACKOFF * 2 ** min(attempts, 32))
    return delay / 2 + random.uniform(0, delay / 2)


class Outbox:
    """Queue of scheduler callbacks and ledger of runs in flight, in one SQLite file shared by all threads."""

    def __init__(
        self,
        path: pathlib.Path,
        scheduler_url: str,
        token: str,
        *,
        max_backoff: float = 30.0,
        timeout: float = 10.0,
    ) -> None:
        self.path = pathlib.Path(path)
        self._base = scheduler_url.rstrip("/")
        self._max_backoff = max_backoff
        self._timeout = timeout
        self.stats = OutboxStats()
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Token {token}"
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
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
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction at a time; IMMEDIATE so other processes on the file serialize too."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- ledger -------------------------------------------------------------------------------------------

    def run_accepted(self, script_id: int) -> bool:
        """Record a run; False if it is in flight or still has callbacks queued (it started: never re-run)."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM outbox WHERE script_id = ? LIMIT 1", (script_id,)).fetchone():
                return False
            sql = "INSERT OR IGNORE INTO ledger (script_id, accepted_at) VALUES (?, ?)"
            cur = db.execute(sql, (script_id, time.time()))
            return cur.rowcount == 1

    def run_container(self, script_id: int, container: str) -> None:
        """Remember the container so a restarted service can remove it."""
        with self._tx() as db:
            db.execute("UPDATE ledger SET container = ? WHERE script_id = ?", (container, script_id))

    def in_flight(self) -> list[InFlight]:
        """Runs accepted and not yet ended; after a restart these are the runs that were lost."""
        rows = self._query("SELECT script_id, container, accepted_at FROM ledger ORDER BY accepted_at")
        return [InFlight(int(s), str(c), float(a)) for s, c, a in rows]

    def holds(self, script_id: int) -> str | None:
        """"running" while in the ledger, "reporting" while callbacks wait, else None (not here)."""
        with self._lock:
            if self._db.execute("SELECT 1 FROM ledger WHERE script_id = ?", (script_id,)).fetchone():
                return "running"
            if self._db.execute("SELECT 1 FROM outbox WHERE script_id = ? LIMIT 1", (script_id,)).fetchone():
                return "reporting"
        return None

    # --- queue --------------------------------------------------------------------------------------------

    def running(self, script_id: int, started_at: float) -> None:
        """Queue the running callback; the result of the same script waits for it."""
        body: dict[str, object] = {"script_id": script_id, "started_at": started_at}
        with self._tx() as db:
            self._enqueue(db, script_id, "running", body)
        self._wake.set()

    def result(self, script_id: int, body: dict[str, object]) -> None:
        """Queue the result and drop the ledger entry atomically, so a crash can never lose the run."""
        body = {**body, "script_id": script_id}
        with self._tx() as db:
            self._enqueue(db, script_id, "result", body)
            db.execute("DELETE FROM ledger WHERE script_id = ?", (script_id,))
        self._wake.set()

    @staticmethod
    def _enqueue(db: sqlite3.Connection, script_id: int, kind: str, body: dict[str, object]) -> None:
        now = time.time()
        db.execute(
            "INSERT INTO outbox (script_id, kind, body, next_at, created_at) VALUES (?, ?, ?, ?, ?)",
            (script_id, kind, json.dumps(body), now, now),
        )

    def pending(self) -> int:
        """Entries not yet acknowledged or dropped."""
        return int(self._query("SELECT COUNT(*) FROM outbox")[0][0])

    def backlog(self) -> tuple[int, float | None]:
        """Entries waiting and the time the oldest was queued (None when there is none)."""
        count, oldest = self._query("SELECT COUNT(*), MIN(created_at) FROM outbox")[0]
        return int(count), float(oldest) if oldest is not None else None

    def flush(self, timeout: float) -> bool:
        """Wait until the queue is empty (tests, graceful shutdown); True if it is."""
        deadline = time.monotonic() + timeout
        while self.pending():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                self._changed.wait(min(remaining, 0.2))
        return True

    # --- delivery -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the delivery thread (daemon: entries are on disk, nothing is lost when the process exits)."""
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="outbox-delivery", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop delivering; queued entries stay on disk for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before the query: an enqueue after it sets the event again
            try:
                wait = self._deliver_due()
            except Exception:
                log.exception("outbox: delivery loop error, retrying in 1 s")
                wait = 1.0
            if wait > 0:
                self._wake.wait(wait)

    def _deliver_due(self) -> float:
        """Send the head entry of every script that is due; return how long to sleep until the next one."""
        rows = self._query(
            "SELECT id, script_id, kind, body, attempts, next_at FROM outbox"
            " WHERE id IN (SELECT MIN(id) FROM outbox GROUP BY script_id) ORDER BY next_at, id"
        )
        wait = IDLE_RECHECK
        for id_, script_id, kind, body, attempts, next_at in rows:
            if self._stop.is_set():
                return 0.0
            now = time.time()
            if float(next_at) > now:
                return min(wait, float(next_at) - now)
            entry = _Entry(int(id_), int(script_id), str(kind), str(body), int(attempts))
            if self._claim(entry.id, next_at):
                self._deliver(entry)
            wait = 0.0  # something may have become due while sending: look again
        return wait

    def _claim(self, entry_id: int, next_at: object) -> bool:
        """Push next_at past the request timeout, so another process on the same file does not send it too."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE outbox SET next_at = ? WHERE id = ? AND next_at = ?",
                (time.time() + self._timeout * 2 + 1, entry_id, next_at),
            )
            return cur.rowcount == 1

    def _deliver(self, entry: _Entry) -> None:
        what = f"{entry.kind} callback for script {entry.script_id}"
        try:
            with self._session.post(
                self._base + PATHS[entry.kind],
                data=entry.body.encode(),
                headers={"Content-Type": "application/json"},
                timeout=self._timeout,
                allow_redirects=False,  # a redirect would turn the POST into a GET and lose the body
            ) as resp:
                status, retry_after = resp.status_code, resp.headers.get("Retry-After", "")
        except requests.RequestException as exc:
            self._retry(entry, what, type(exc).__name__, 0.0)
            return
        if 200 <= status < 300:
            self._finish(entry.id, "delivered")
        elif 400 <= status < 500 and status not in (408, 429):
            log.warning("outbox: dropped %s: HTTP %d (permanent)", what, status, extra={"run_id": entry.script_id})
            with self._lock:
                self.stats.failed(f"HTTP {status}")
            self._finish(entry.id, "dropped")
        else:
            hint = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else 0.0
            self._retry(entry, what, f"HTTP {status}", hint)

    def _finish(self, entry_id: int, counter: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))
        with self._lock:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        with self._changed:
            self._changed.notify_all()

    def _retry(self, entry: _Entry, what: str, reason: str, hint: float) -> None:
        delay = min(self._max_backoff, max(hint, backoff(entry.attempts, self._max_backoff)))
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_at = ? WHERE id = ?",
                (time.time() + delay, entry.id),
            )
        with self._lock:
            self.stats.retried += 1
            self.stats.failed(reason)
        level = logging.WARNING if entry.attempts == 0 else logging.DEBUG
        msg = "outbox: %s failed: %s (attempt %d), retry in %.1f s"
        log.log(level, msg, what, reason, entry.attempts + 1, delay, extra={"run_id": entry.script_id})
