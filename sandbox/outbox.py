"""Durable outbox for the scheduler callbacks, plus the ledger of runs and their tombstones.

A run's result is the one thing the user sees of it, so it is written to SQLite (WAL, synchronous=FULL)
before any delivery is tried, and retried until the scheduler answers 2xx, across restarts of either side.
Nothing the scheduler answers drops a result: 401, 403, 404, 5xx and connection errors are deployment
errors, retried with capped backoff for as long as it takes, logged at ERROR once per cause and shown in
/health. A result the scheduler refuses as a body (400, 413, 422) is replaced by a minimal failure result
for the same run, which is then retried like any other. Bodies are bounded in bytes before they are
queued (PYTHON_SCHEDULER_MAX_BODY_BYTES), so a result always fits.

Each callback carries its run's own secret (issued at hand-off), never a shared token. The scheduler refuses
a callback for that run deliberately (403 or 409 with {"refused": why}: a replay, a transition the run cannot
make, a secret that is not the run's) when sending it again cannot change the answer: such an entry counts as
acknowledged with an error, one ERROR line, and the run is remembered as done (never run again).

`sandbox.outbox_store` keeps where each run is (ledger, queue, tombstones) in one file.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

from sandbox import texts
from sandbox.outbox_store import RESULT_KINDS, Entry, InFlight, OutboxStore, pack
from sandbox.output import encode_body, fit_result
from sandbox.tls import describe_failure

__all__ = ["InFlight", "Outbox", "OutboxStats", "backoff"]

log = logging.getLogger(__name__)

BASE_BACKOFF = 0.5
IDLE_RECHECK = 5.0  # picks up entries queued by another process on the same file
PRUNE_EVERY = 60.0
TRUNCATE_EVERY = 5.0  # at most this often the log is cut back when the queue has emptied
PATHS = {"running": "/script-running-callback/", "result": "/script-result/", "result_minimal": "/script-result/"}
REFUSED_BODY = (400, 413, 422)  # the scheduler refuses this body; sending it again cannot help
REFUSED_FOR_THE_RUN = (403, 409)  # with {"refused": why} in JSON: the scheduler's final word on this callback
DEFAULT_MAX_BODY = 8 << 20
DEFAULT_TOMBSTONE_SECS = 7 * 24 * 3600


@dataclass
class OutboxStats:
    """Counters since this process started, for /health."""

    delivered: int = 0
    retried: int = 0
    dropped: int = 0  # running callbacks refused as a body (their result still goes)
    replaced: int = 0  # results refused as a body, replaced by a minimal failure result
    refused: int = 0  # callbacks the scheduler refused for their run (replay, wrong state): acknowledged
    causes: dict[str, int] = field(default_factory=dict)  # failed attempts by cause, for /metrics


@dataclass
class DeliveryTrouble:
    """Why callbacks are not getting through, for /health; each cause is logged once per episode."""

    failing_since: float | None = None
    failed_attempts: int = 0
    last_error: str = ""
    last_error_at: float | None = None
    errors_total: int = 0
    _logged: set[str] = field(default_factory=set)

    def failed(self, cause: str, what: str) -> None:
        now = time.time()
        if self.failing_since is None:
            self.failing_since = now
        self.failed_attempts += 1
        self.errors_total += 1
        self.last_error, self.last_error_at = cause, now
        if cause not in self._logged:
            self._logged.add(cause)
            log.error("outbox: %s not delivered: %s (retried until it is; logged once per cause)", what, cause)

    def succeeded(self) -> None:
        if self.failing_since is not None:
            log.info("outbox: callbacks delivered again after %d failed attempts in %.0f s",
                     self.failed_attempts, time.time() - self.failing_since)
        self.failing_since = None
        self.failed_attempts = 0
        self._logged.clear()

    def as_dict(self) -> dict[str, object]:
        return {"failing": self.failing_since is not None, "failing_since": self.failing_since,
                "failed_attempts": self.failed_attempts, "last_error": self.last_error or None,
                "last_error_at": self.last_error_at, "errors_total": self.errors_total}


def metric_cause(cause: str) -> str:
    """A delivery cause as a short metrics label: http_403, http_503, ... or unreachable."""
    status = cause[5:8] if cause.startswith("HTTP ") else ""
    return f"http_{status}" if status.isdigit() else "unreachable"


def backoff(attempts: int, cap: float) -> float:
    """Exponential delay, jittered within [d/2, d] so entries failing together do not retry in lockstep."""
    delay = min(cap, BASE_BACKOFF * 2 ** min(attempts, 32))
    return delay / 2 + random.uniform(0, delay / 2)


class Outbox:
    """Queue of scheduler callbacks and where every accepted run is, in one SQLite file."""

    def __init__(
        self,
        path: pathlib.Path,
        scheduler_url: str,
        *,
        verify: str | bool = True,
        client_cert: tuple[str, str] | None = None,
        max_backoff: float = 30.0,
        timeout: float = 10.0,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        tombstone_secs: float = DEFAULT_TOMBSTONE_SECS,
    ) -> None:
        self.store = OutboxStore(path)
        self.path = self.store.path
        self._base = scheduler_url.rstrip("/")
        self._max_backoff = max_backoff
        self._timeout = timeout
        self.max_body_bytes = max_body_bytes
        self.tombstone_secs = tombstone_secs
        self.stats = OutboxStats()
        self.trouble = DeliveryTrouble()
        self.write_error = ""  # the last failure to queue a result; the node is unhealthy while set
        self._session = requests.Session()
        self._session.trust_env = False  # no proxy or CA from the environment: the config says where and whom
        self._session.verify = verify
        self._session.cert = client_cert
        self._lock = threading.Lock()
        self._unsaved: list[tuple[int, bytes]] = []  # results the disk refused, kept until it takes them
        self._deferred: dict[int, tuple[float, bytes]] = {}  # running callbacks not yet due: (monotonic due, body)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pruned_at = 0.0
        self._truncated_at = 0.0

    # --- where a run is ---------------------------------------------------------------------------

    def run_accepted(self, script_id: int, secret: str = "") -> bool:
        """Record a new run with its callback secret; False if this node holds or has held the id (never again)."""
        return self.store.accept(script_id, time.time(), secret)

    def run_container(self, script_id: int, container: str) -> None:
        """Remember the container so a restarted service can remove it."""
        self.store.set_container(script_id, container)

    def in_flight(self) -> list[InFlight]:
        """Runs accepted and not yet ended; after a restart these are the runs that were lost."""
        return self.store.in_flight()

    def holds(self, script_id: int) -> str | None:
        """"running", "reporting" (result not yet acknowledged), "done" (tombstone) or None (never here)."""
        with self._lock:
            if any(sid == script_id for sid, _ in self._unsaved):
                return "reporting"
        return self.store.state(script_id)

    # --- queue --------------------------------------------------------------------------------------

    def running(self, script_id: int, started_at: float, delay: float = 0.0) -> None:
        """Queue the running callback, after `delay` seconds; the result of the same script waits for it.

        Until then it is held in memory: a result that comes first takes its place (it carries the same started_at,
        and the scheduler counts a run whose result comes first as started), and a crash loses nothing the
        ledger does not hold (the run ends as lost)."""
        packed = pack(encode_body({"script_id": script_id, "started_at": started_at}))
        if delay > 0:
            with self._lock:
                self._deferred[script_id] = (time.monotonic() + delay, packed)
        else:
            self.store.enqueue(script_id, "running", packed, time.time())
        self._wake.set()

    def result(self, script_id: int, body: dict[str, object]) -> None:
        """Queue the result (cut to fit the body limit) and end the run's ledger entry in one transaction.

        If the disk refuses it, the result is kept in memory and saved by the delivery thread as soon
        as it can be, and the node reports itself unhealthy meanwhile: a result is never dropped.
        """
        packed = pack(fit_result({**body, "script_id": script_id}, self.max_body_bytes))
        with self._lock:  # a running callback not queued by now never will be (_queue_deferred)
            self._deferred.pop(script_id, None)
        try:
            # Committed (safe from the service's crash) and handed to delivery, then synced to the disk while it
            # is sent: a power cut before the sync ends the run as lost, after it the result is kept, as when
            # the commit itself synced; only the scheduler may hear of it a few milliseconds sooner.
            self.store.enqueue(script_id, "result", packed, time.time(), ends_run=True, durable=False)
        except sqlite3.Error as exc:
            log.error("outbox: result for script %d could not be saved (%s); kept in memory", script_id, exc)
            with self._lock:
                self.write_error = str(exc)
                self._unsaved.append((script_id, packed))
            self._wake.set()
            return
        self._wake.set()
        try:
            self.store.sync()
        except OSError as exc:
            log.error("outbox: result for script %d queued but not synced to the disk: %s", script_id, exc)

    def pending(self) -> int:
        """Entries not yet acknowledged."""
        with self._lock:
            unsaved = len(self._unsaved)
        return self.store.pending() + unsaved

    def oldest_pending_age(self) -> float | None:
        oldest = self.store.oldest_pending()
        return None if oldest is None else max(0.0, time.time() - oldest)

    def disk_bytes(self) -> int:
        return self.store.disk_bytes()

    def check_writable(self) -> str | None:
        """None when results can be queued, else why not."""
        with self._lock:
            if self.write_error:
                return self.write_error
        try:
            self.store.check_writable()
        except sqlite3.Error as exc:
            return str(exc)
        return None

    def wait_reported(self, script_id: int, timeout: float, cancel: threading.Event | None = None) -> bool:
        """Wait until the scheduler took the run's result, delivery stops or `cancel` is set (True), or `timeout`
        seconds passed (False)."""
        return self._wait_until(lambda: self._stop.is_set() or (cancel is not None and cancel.is_set())
                                or self.holds(script_id) != "reporting", timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until the queue is empty (tests, graceful shutdown); True if it is."""
        return self._wait_until(lambda: not self.pending(), timeout)

    def _wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Check again at each delivery (or every 0.2 s) until done() or the timeout; done()'s last answer."""
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                self._changed.wait(min(remaining, 0.2))
        return True

    # --- delivery -----------------------------------------------------------------------------------

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
                self._save_unsaved()
                self._housekeeping()
                wait = min(self._queue_deferred(), self._deliver_due())
            except Exception:
                log.exception("outbox: delivery loop error, retrying in 1 s")
                wait = 1.0
            if wait > 0:
                self._wake.wait(wait)

    def _save_unsaved(self) -> None:
        with self._lock:
            waiting = list(self._unsaved)
        for script_id, packed in waiting:
            try:
                self.store.enqueue(script_id, "result", packed, time.time(), ends_run=True)
            except sqlite3.Error as exc:
                with self._lock:
                    self.write_error = str(exc)
                return
            with self._lock:
                self._unsaved.remove((script_id, packed))
                if not self._unsaved:
                    self.write_error = ""
            log.info("outbox: result for script %d saved after all", script_id)

    def _queue_deferred(self) -> float:
        """Queue the running callbacks now due; seconds until the next one is (IDLE_RECHECK: none held)."""
        now = time.monotonic()
        with self._lock:  # held while queueing: the run's result cannot slip in ahead of it
            due = [(sid, packed) for sid, (at, packed) in self._deferred.items() if at <= now]
            for script_id, packed in due:
                self.store.enqueue(script_id, "running", packed, time.time())
                del self._deferred[script_id]
            return min((at - now for at, _ in self._deferred.values()), default=IDLE_RECHECK)

    def _housekeeping(self) -> None:
        now = time.time()
        if now - self._pruned_at >= PRUNE_EVERY:
            self._pruned_at = now
            pruned = self.store.prune_tombstones(now - self.tombstone_secs)
            if pruned:
                log.info("outbox: forgot %d runs acknowledged more than %.0f s ago", pruned, self.tombstone_secs)

    def _deliver_due(self) -> float:
        """Send the head entry of every script that is due; return how long to sleep until the next one."""
        wait = IDLE_RECHECK
        for entry in self.store.heads():
            if self._stop.is_set():
                return 0.0
            now = time.time()
            if entry.next_at > now:
                return min(wait, entry.next_at - now)
            if self.store.claim(entry, time.time() + self._timeout * 2 + 1):
                self._deliver(entry)
            wait = 0.0  # something may have become due while sending: look again
        if wait and time.time() - self._truncated_at >= TRUNCATE_EVERY:
            self._truncated_at = time.time()
            self.store.reclaim(truncate_log=self.store.pending() == 0)
        return wait

    def _deliver(self, entry: Entry) -> None:
        what = f"{entry.kind.split('_')[0]} callback for script {entry.script_id}"
        body = self.store.body(entry.id)
        if body is None:
            return  # taken by another process on the same file
        headers = {"Content-Type": "application/json"}
        if entry.secret:
            headers["Authorization"] = f"Token {entry.secret}"
        try:
            with self._session.post(
                self._base + PATHS[entry.kind],
                data=body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,  # a redirect would turn the POST into a GET and lose the body
            ) as resp:
                status, retry_after = resp.status_code, resp.headers.get("Retry-After", "")
                refusal = _refusal(resp) if status in REFUSED_FOR_THE_RUN else None
        except requests.RequestException as exc:
            self._retry(entry, what, texts.delivery_cause(None, describe_failure(exc)), 0.0)
            return
        if 200 <= status < 300:
            self.store.acknowledged(entry, time.time())
            with self._lock:
                self.trouble.succeeded()
            self._count("delivered")
            if entry.kind in RESULT_KINDS:
                self.store.reclaim(truncate_log=False)
        elif refusal is not None:
            log.error("outbox: %s refused by the scheduler for this run (HTTP %d: %s); taken as its final answer",
                      what, status, refusal)
            self.store.acknowledged(entry, time.time())
            self._count("refused")
        elif status in REFUSED_BODY and entry.kind == "result":
            self._replace(entry, body, status)
        elif status in REFUSED_BODY and entry.kind == "running":
            # Its result carries the same started_at and goes next; waiting for this one would block it.
            log.error("outbox: %s refused by the scheduler (HTTP %d); the result follows", what, status)
            self.store.drop(entry)
            self._count("dropped")
        else:
            hint = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else 0.0
            self._retry(entry, what, texts.delivery_cause(status), hint)

    def _replace(self, entry: Entry, body: bytes, status: int) -> None:
        """A result the scheduler refuses as a body: the same run, ended as a failure that says why."""
        log.error("outbox: result for script %d refused by the scheduler (HTTP %d, %d bytes); "
                  "sending a failure result instead", entry.script_id, status, len(body))
        minimal: dict[str, object] = {"script_id": entry.script_id, "success": False, "return_code": None,
                                      "output": texts.RESULT_REFUSED.format(status=status)}
        try:
            original = json.loads(body)
        except ValueError:
            original = {}
        for key in ("started_at", "spend_time"):
            value = original.get(key) if isinstance(original, dict) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                    and 0 <= value < 1e11:
                minimal[key] = value
        self.store.replace(entry, "result_minimal", pack(encode_body(minimal)), time.time())
        self._count("replaced")
        self._wake.set()

    def _count(self, counter: str) -> None:
        with self._lock:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        with self._changed:
            self._changed.notify_all()

    def _retry(self, entry: Entry, what: str, cause: str, hint: float) -> None:
        delay = min(self._max_backoff, max(hint, backoff(entry.attempts, self._max_backoff)))
        self.store.postpone(entry, time.time() + delay)
        with self._lock:
            self.stats.retried += 1
            self.trouble.failed(cause, what)
            label = metric_cause(cause)
            self.stats.causes[label] = self.stats.causes.get(label, 0) + 1
        log.debug("outbox: %s failed: %s (attempt %d), retry in %.1f s", what, cause, entry.attempts + 1, delay)

    def health(self) -> dict[str, object]:
        """The outbox's part of /health."""
        with self._lock:
            stats = {"delivered": self.stats.delivered, "retried": self.stats.retried,
                     "running_dropped": self.stats.dropped, "results_replaced": self.stats.replaced,
                     "refused_for_the_run": self.stats.refused}
            delivery = self.trouble.as_dict()
        age = self.oldest_pending_age()
        return {"pending": self.pending(), "oldest_pending_age_s": None if age is None else round(age, 1),
                "disk_bytes": self.disk_bytes(), "delivery": delivery, **stats}


def _refusal(resp: requests.Response) -> str | None:
    """The scheduler's reason when it refused the callback for its run on purpose ({"refused": why}), else None.

    A 403 or 409 without it (a proxy, another service at that URL) stays a deployment error: retried.
    """
    if not resp.headers.get("Content-Type", "").startswith("application/json"):
        return None
    try:
        data = resp.json()
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("refused"), str):
        return None
    message = data.get("error_msg")
    return f"{data['refused']}: {message}"[:300] if isinstance(message, str) else data["refused"][:100]
