"""The outbox against a real HTTP receiver on 127.0.0.1: delivery, order, retries, restarts, ledger."""

from __future__ import annotations

import json
import logging
import pathlib
import socket
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sandbox import texts
from sandbox.outbox import InFlight, Outbox

TOKEN = "s3cret-token"
SECRET_OUTPUT = "password=hunter2"


@dataclass(frozen=True)
class Call:
    path: str
    auth: str
    content_type: str
    body: dict[str, object]
    status: int
    size: int = 0


class Receiver:
    """A scheduler stand-in recording every callback; `answer` picks the status, `stop()` takes it down."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.calls: list[Call] = []
        self.answer: Callable[[str, dict[str, object]], int] = lambda path, body: 200
        self.max_body = 0  # like the scheduler: 413 for a body over this many bytes (0: no limit)
        self.error_body: dict[str, object] | None = None  # the JSON of a non-2xx answer (default: none of ours)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = json.loads(raw)
                status = receiver.answer(self.path, body)
                if receiver.max_body and len(raw) > receiver.max_body:
                    status = 413
                with receiver._lock:
                    receiver.calls.append(
                        Call(self.path, self.headers.get("Authorization", ""),
                             self.headers.get("Content-Type", ""), body, status, len(raw))
                    )
                payload = b'{"success": true}'
                if status >= 300 and receiver.error_body is not None:
                    payload = json.dumps(receiver.error_body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ok(self, path_suffix: str = "") -> list[Call]:
        """Acknowledged calls, in arrival order."""
        with self._lock:
            return [c for c in self.calls if 200 <= c.status < 300 and c.path.endswith(path_suffix)]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


@pytest.fixture
def make_outbox(tmp_path: pathlib.Path, receiver: Receiver) -> Iterator[Callable[..., Outbox]]:
    made: list[Outbox] = []

    def make(path: pathlib.Path | None = None, **kw: float) -> Outbox:
        kw.setdefault("max_backoff", 0.2)
        kw.setdefault("timeout", 2.0)
        box = Outbox(path or tmp_path / "outbox.sqlite", receiver.url, **kw)  # type: ignore[arg-type]
        made.append(box)
        return box

    yield make
    for box in made:
        box.stop()


def result_body(script_id: int, success: bool = True) -> dict[str, object]:
    return {"script_id": script_id, "success": success, "return_code": 0 if success else 1,
            "output": f"{SECRET_OUTPUT} hello ünïcode\n", "started_at": 1700000000.5, "spend_time": 1.25}


def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def test_delivers_with_auth_header_and_exact_bodies(
    receiver: Receiver, make_outbox: Callable[..., Outbox]
) -> None:
    box = make_outbox()
    box.start()
    box.start()  # idempotent
    assert box.run_accepted(41, TOKEN)
    box.running(41, 1700000000.5)
    box.result(41, result_body(41))
    assert box.flush(5)
    assert [(c.path, c.body) for c in receiver.calls] == [
        ("/script-running-callback/", {"script_id": 41, "started_at": 1700000000.5}),
        ("/script-result/", result_body(41)),
    ]
    assert {c.auth for c in receiver.calls} == {f"Token {TOKEN}"}
    assert {c.content_type for c in receiver.calls} == {"application/json"}
    assert box.pending() == 0 and box.in_flight() == []
    assert (box.stats.delivered, box.stats.retried, box.stats.dropped) == (2, 0, 0)


def test_result_waits_for_running_callback_per_script(
    receiver: Receiver, make_outbox: Callable[..., Outbox]
) -> None:
    failures: dict[int, int] = {}

    def answer(path: str, body: dict[str, object]) -> int:
        sid = int(body["script_id"])  # type: ignore[call-overload]
        if path.endswith("running-callback/") and failures.get(sid, 0) < 2:  # every running fails twice
            failures[sid] = failures.get(sid, 0) + 1
            return 500
        return 200

    receiver.answer = answer
    box = make_outbox()
    box.start()

    def run(sid: int) -> None:
        assert box.run_accepted(sid)
        box.running(sid, time.time())
        box.result(sid, result_body(sid))

    threads = [threading.Thread(target=run, args=(sid,)) for sid in range(1, 21)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert box.flush(15)
    for sid in range(1, 21):
        mine = [(c.path, c.status) for c in receiver.calls if c.body["script_id"] == sid]
        assert mine == [("/script-running-callback/", 500)] * 2 + [
            ("/script-running-callback/", 200), ("/script-result/", 200)]
    assert box.stats.delivered == 40 and box.stats.retried == 40


def test_scheduler_down_then_back_on_same_port(
    receiver: Receiver, make_outbox: Callable[..., Outbox]
) -> None:
    receiver.stop()
    box = make_outbox()
    box.start()
    box.running(5, 1.0)
    box.result(5, result_body(5))
    assert wait_until(lambda: box.stats.retried >= 3)
    assert box.pending() == 2
    receiver.start()
    assert box.flush(5)
    assert [c.path for c in receiver.ok()] == ["/script-running-callback/", "/script-result/"]


def test_new_outbox_on_same_file_delivers_what_old_one_queued(
    receiver: Receiver, make_outbox: Callable[..., Outbox]
) -> None:
    receiver.answer = lambda path, body: 503
    old = make_outbox()
    old.start()
    old.running(9, 2.0)
    old.result(9, result_body(9))
    assert wait_until(lambda: old.stats.retried >= 1)
    old.stop()
    assert old.pending() == 2
    receiver.answer = lambda path, body: 200
    new = make_outbox()
    assert new.pending() == 2
    new.start()
    assert new.flush(5)
    assert [c.body for c in receiver.ok()] == [{"script_id": 9, "started_at": 2.0}, result_body(9)]


def test_ledger_survives_restart_and_result_removes_it(make_outbox: Callable[..., Outbox]) -> None:
    old = make_outbox()
    assert old.run_accepted(1) and old.run_accepted(2)
    old.run_container(1, "seatable-run-1")
    old.stop()
    new = make_outbox()
    lost = new.in_flight()
    assert [(f.script_id, f.container) for f in lost] == [(1, "seatable-run-1"), (2, "")]
    assert all(isinstance(f, InFlight) and f.accepted_at > 0 for f in lost)
    new.result(1, result_body(1, success=False))
    assert [f.script_id for f in new.in_flight()] == [2] and new.pending() == 1
    with pytest.raises(TypeError):  # unserializable body: the transaction rolls back, the run stays in flight
        new.result(2, {"output": object()})
    assert [f.script_id for f in new.in_flight()] == [2] and new.pending() == 1


def test_result_and_ledger_switch_atomically(
    tmp_path: pathlib.Path, make_outbox: Callable[..., Outbox]
) -> None:
    """A reader on its own connection must never see a run in neither table (that run would be lost)."""
    box = make_outbox()
    ids = range(1, 301)
    for sid in ids:
        assert box.run_accepted(sid)
    seen_gap: list[int] = []
    done = threading.Event()

    def watch() -> None:
        db = sqlite3.connect(tmp_path / "outbox.sqlite", isolation_level=None)
        while not done.is_set():
            db.execute("BEGIN")  # one read transaction = one snapshot of both tables
            ledger = {r[0] for r in db.execute("SELECT script_id FROM ledger")}
            queued = {r[0] for r in db.execute("SELECT script_id FROM outbox")}
            db.execute("COMMIT")
            seen_gap.extend(set(ids) - ledger - queued)
        db.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    for sid in ids:
        box.result(sid, result_body(sid))
    done.set()
    watcher.join()
    assert seen_gap == []
    assert box.in_flight() == [] and box.pending() == 300


@pytest.mark.parametrize("failure", [401, 403, 404, 500, 502, 408, 429])
def test_deployment_errors_are_retried_until_fixed_and_logged_once(
    receiver: Receiver, make_outbox: Callable[..., Outbox], caplog: pytest.LogCaptureFixture, failure: int
) -> None:
    """No answer drops a callback: the run must never look "never arrived" (issue 12: re-runs on a wrong token)."""
    fixed = threading.Event()
    receiver.answer = lambda path, body: 200 if fixed.is_set() else failure
    caplog.set_level(logging.DEBUG, logger="sandbox.outbox")
    box = make_outbox()
    box.start()
    for sid in (7, 8):
        assert box.run_accepted(sid, TOKEN)
        box.running(sid, 3.0)
        box.result(sid, result_body(sid))
    assert wait_until(lambda: box.stats.retried >= 8, timeout=10)
    assert box.pending() == 4 and box.holds(7) == "reporting"
    assert not box.run_accepted(7)
    delivery = box.health()["delivery"]
    assert isinstance(delivery, dict) and delivery["failing"] is True
    assert str(delivery["last_error"]).startswith(f"HTTP {failure}")
    assert int(delivery["failed_attempts"]) >= 8
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # once per cause, not per attempt
    assert f"HTTP {failure}" in errors[0].getMessage()
    fixed.set()
    assert box.flush(10)
    assert sorted(c.body["script_id"] for c in receiver.ok("/script-result/")) == [7, 8]  # type: ignore[type-var]
    assert {c.body["script_id"]: c.body for c in receiver.ok("/script-result/")}[7] == result_body(7)
    assert box.holds(7) == "done" and box.holds(8) == "done" and not box.run_accepted(8)
    assert box.health()["delivery"]["failing"] is False  # type: ignore[index]
    assert TOKEN not in caplog.text and SECRET_OUTPUT not in caplog.text


@pytest.mark.parametrize(("status", "why"), [(409, "finished"), (409, "replay"), (403, "secret")])
def test_a_refusal_for_the_run_is_its_final_answer(
    receiver: Receiver, make_outbox: Callable[..., Outbox], caplog: pytest.LogCaptureFixture, status: int, why: str
) -> None:
    """Issue 20: a replay or a callback for a run not handed here is answered 403/409 {"refused"}: acknowledged with
    one ERROR line, never sent again, and the run stays remembered (never run again): nothing re-run, nothing lost."""
    receiver.answer = lambda path, body: status
    receiver.error_body = {"error_msg": "no", "refused": why}
    caplog.set_level(logging.DEBUG, logger="sandbox.outbox")
    box = make_outbox()
    box.start()
    assert box.run_accepted(9, TOKEN)
    box.running(9, 3.0)
    box.result(9, result_body(9))
    assert box.flush(5)
    assert [(c.path, c.status) for c in receiver.calls] == [("/script-running-callback/", status),
                                                            ("/script-result/", status)]
    assert box.holds(9) == "done" and not box.run_accepted(9)
    assert box.stats.refused == 2 and box.stats.retried == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all(why in line and f"HTTP {status}" in line for line in errors), errors
    assert TOKEN not in caplog.text


def test_connection_errors_are_one_cause(make_outbox: Callable[..., Outbox], receiver: Receiver,
                                         caplog: pytest.LogCaptureFixture) -> None:
    receiver.stop()
    box = make_outbox()
    box.start()
    box.result(3, result_body(3))
    assert wait_until(lambda: box.stats.retried >= 4, timeout=10)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "unreachable" in errors[0] and "ConnectionError" in errors[0]
    receiver.start()
    assert box.flush(10)
    assert box.holds(3) == "done"


@pytest.mark.parametrize("refusal", [400, 413, 422])
def test_a_refused_result_is_replaced_by_a_minimal_failure(
    receiver: Receiver, make_outbox: Callable[..., Outbox], refusal: int
) -> None:
    receiver.answer = lambda path, body: refusal if "refused by the scheduler" not in str(body.get("output")) \
        and path.endswith("result/") else 200
    box = make_outbox()
    box.start()
    assert box.run_accepted(12)
    box.running(12, 5.0)
    box.result(12, result_body(12))
    assert box.flush(10)
    results = receiver.ok("/script-result/")
    assert len(results) == 1
    assert results[0].body == {"script_id": 12, "success": False, "return_code": None,
                               "output": texts.RESULT_REFUSED.format(status=refusal),
                               "started_at": 1700000000.5, "spend_time": 1.25}
    assert box.stats.replaced == 1 and box.holds(12) == "done"


def test_a_refused_running_callback_does_not_hold_back_the_result(
    receiver: Receiver, make_outbox: Callable[..., Outbox]
) -> None:
    receiver.answer = lambda path, body: 422 if path.endswith("running-callback/") else 200
    box = make_outbox()
    box.start()
    box.running(13, 5.0)
    box.result(13, result_body(13))
    assert box.flush(10)
    assert [c.body for c in receiver.ok()] == [result_body(13)]
    assert box.stats.dropped == 1


def test_a_run_that_ends_before_its_running_callback_is_due_sends_only_its_result(
    receiver: Receiver, make_outbox: Callable[..., Outbox]
) -> None:
    """A short run: its result (same started_at) takes the place of the running callback, and nothing is queued
    for the running callback at all; a longer one sends it when due, then its result."""
    box = make_outbox()
    box.start()
    assert box.run_accepted(60, TOKEN) and box.run_accepted(61, TOKEN)
    box.running(60, 1700000000.5, delay=0.5)
    box.running(61, 1700000001.5, delay=0.1)
    assert box.pending() == 0  # held in memory until due
    assert wait_until(lambda: any(c.body["script_id"] == 61 for c in receiver.ok()))
    box.result(60, result_body(60))
    box.result(61, result_body(61))
    assert box.flush(5)
    time.sleep(0.6)  # past 60's due time: nothing more goes out for it
    assert [(c.path, c.body["script_id"]) for c in receiver.calls] == [
        ("/script-running-callback/", 61), ("/script-result/", 60), ("/script-result/", 61)]
    assert receiver.calls[0].body == {"script_id": 61, "started_at": 1700000001.5}
    assert box.pending() == 0 and box.in_flight() == [] and box.stats.delivered == 3


def test_a_due_running_callback_and_its_result_racing_stay_in_order(
    receiver: Receiver, make_outbox: Callable[..., Outbox]
) -> None:
    """Results queued just as their running callbacks fall due: never a running callback after its result."""
    box = make_outbox()
    box.start()
    for sid in range(70, 110):
        assert box.run_accepted(sid, TOKEN)
        box.running(sid, 1700000000.5, delay=0.01 * (sid % 5))
    time.sleep(0.02)
    for sid in range(70, 110):
        box.result(sid, result_body(sid))
    assert box.flush(10)
    time.sleep(0.1)
    for sid in range(70, 110):
        mine = [c.path for c in receiver.calls if c.body["script_id"] == sid]
        assert mine in (["/script-result/"], ["/script-running-callback/", "/script-result/"]), (sid, mine)
    assert {c.status for c in receiver.calls} == {200}


def test_result_bodies_fit_the_schedulers_limit(receiver: Receiver, make_outbox: Callable[..., Outbox]) -> None:
    """700,000 emoji are 8.4 MB as ASCII-escaped JSON: sent as UTF-8 and cut to fit, never refused."""
    limit = 2_000_000
    receiver.max_body = limit
    box = make_outbox(max_body_bytes=limit)
    box.start()
    emoji = "\U0001F600" * 700_000 + "\n"
    box.result(20, {**result_body(20), "output": emoji})
    box.result(21, {**result_body(21), "output": "\U0001F600" * 400_000})  # 1.6 MB: fits whole
    assert box.flush(20)
    got = {c.body["script_id"]: c for c in receiver.ok("/script-result/")}
    cut = str(got[20].body["output"])
    kept = cut.index("\n[")
    assert cut[:kept] == "\U0001F600" * kept  # intact up to the cut, whole characters
    assert cut[kept:] == texts.notice(texts.BODY_LIMIT.format(kept=kept, limit=limit))
    assert limit - 8 <= got[20].size <= limit  # as much as fits
    assert got[21].body["output"] == "\U0001F600" * 400_000
    assert box.stats.replaced == 0


def test_tombstones_answer_done_until_pruned(receiver: Receiver, make_outbox: Callable[..., Outbox],
                                             tmp_path: pathlib.Path) -> None:
    box = make_outbox()
    box.start()
    assert box.holds(30) is None
    assert box.run_accepted(30)
    assert box.holds(30) == "running"
    box.result(30, result_body(30))
    assert box.flush(5)
    assert box.holds(30) == "done" and not box.run_accepted(30)
    box.stop()
    again = make_outbox(tombstone_secs=0.5)
    assert again.holds(30) == "done"  # remembered across restarts
    time.sleep(0.6)
    again.start()
    assert wait_until(lambda: again.holds(30) is None, timeout=5)
    assert again.run_accepted(30)  # past the tombstone time the id is new here


def test_disk_stays_small_after_200_results(receiver: Receiver, make_outbox: Callable[..., Outbox],
                                            tmp_path: pathlib.Path) -> None:
    """Compressed while queued, space given back once delivered (issue 12: no 12 MB per result)."""
    receiver.stop()
    box = make_outbox()
    lines = "".join(f"row {i}: customer {i * 7919 % 10007} paid {i * 31 % 997}.{i % 100:02d} EUR\n"
                    for i in range(4000))  # 170 KB of ordinary script output
    for sid in range(1, 201):
        assert box.run_accepted(sid)
        box.running(sid, 1.0)
        box.result(sid, {**result_body(sid), "output": f"run {sid}\n" + lines})
    queued = box.disk_bytes()
    assert queued < 200 * len(lines) / 2, f"{queued} bytes on disk for 200 queued results"  # compressed
    receiver.start()
    box.start()
    assert box.flush(60)
    assert len(receiver.ok("/script-result/")) == 200
    assert wait_until(lambda: box.disk_bytes() < 512 << 10, timeout=15), box.disk_bytes()


def test_a_result_the_disk_refuses_is_kept_and_saved_later(
    receiver: Receiver, make_outbox: Callable[..., Outbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the first write of a result fails as on a full disk."""
    box = make_outbox()
    assert box.run_accepted(40)
    real = box.store.enqueue
    failures = [sqlite3.OperationalError("database or disk is full")]

    def enqueue(*args: object, **kwargs: object) -> None:
        if failures:
            raise failures.pop()
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(box.store, "enqueue", enqueue)
    box.result(40, result_body(40))
    assert box.check_writable() == "database or disk is full"
    assert box.holds(40) == "reporting" and box.pending() == 1
    box.start()
    assert box.flush(5)
    assert receiver.ok("/script-result/")[0].body == result_body(40)
    assert box.check_writable() is None and box.holds(40) == "done"


def test_stuck_script_does_not_block_others(receiver: Receiver, make_outbox: Callable[..., Outbox]) -> None:
    receiver.answer = lambda path, body: 500 if body["script_id"] == 1 else 200
    box = make_outbox(max_backoff=30.0)
    box.start()
    box.result(1, result_body(1))
    assert wait_until(lambda: box.stats.retried >= 3, timeout=10)  # next backoff: 2-4 s
    t0 = time.monotonic()
    for sid in (2, 3):
        box.running(sid, 4.0)
        box.result(sid, result_body(sid))
    # The outbox's own count, not the receiver's: the receiver records a request before the outbox has its answer
    # and deletes the entry, so pending() read right after the receiver's count raced the delete.
    assert wait_until(lambda: box.stats.delivered == 4, timeout=2)
    assert time.monotonic() - t0 < 1.0  # woken on enqueue, not held behind script 1's backoff
    assert len(receiver.ok()) == 4 and box.pending() == 1 and box.holds(1) == "reporting"


def test_run_accepted_twice_is_refused(make_outbox: Callable[..., Outbox]) -> None:
    box = make_outbox()
    assert box.run_accepted(3)
    assert not box.run_accepted(3)
    box.result(3, result_body(3))
    assert not box.run_accepted(3)  # result still queued: the run happened, it must not run again
    box.start()
    assert box.flush(5)
    assert box.run_accepted(4)


def test_file_and_directory_modes(tmp_path: pathlib.Path, make_outbox: Callable[..., Outbox]) -> None:
    path = tmp_path / "state" / "sandbox" / "outbox.sqlite"
    box = make_outbox(path)
    box.running(1, 1.0)  # forces the WAL file into existence
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for extra in path.parent.iterdir():
        assert stat.S_IMODE(extra.stat().st_mode) == 0o600, extra.name


def test_a_file_from_before_compression_is_adopted(receiver: Receiver, make_outbox: Callable[..., Outbox],
                                                    tmp_path: pathlib.Path) -> None:
    """An upgrade finds plain JSON bodies, no tombstone table and no incremental vacuum: all keep working."""
    path = tmp_path / "outbox.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, script_id INTEGER NOT NULL, kind TEXT NOT NULL,
            body TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, created_at REAL NOT NULL);
        CREATE TABLE ledger (script_id INTEGER PRIMARY KEY, container TEXT NOT NULL DEFAULT '',
            accepted_at REAL NOT NULL);
        INSERT INTO ledger VALUES (52, 'seatable-run-52', 1.0);
    """)
    db.execute("INSERT INTO outbox (script_id, kind, body, next_at, created_at) VALUES (51, 'result', ?, 0, 0)",
               (json.dumps(result_body(51)),))
    db.commit()
    db.close()
    box = make_outbox(path)
    assert box.holds(51) == "reporting" and box.holds(52) == "running"
    assert [f.script_id for f in box.in_flight()] == [52]
    box.start()
    assert box.flush(5)
    assert receiver.ok("/script-result/")[0].body == result_body(51)
    assert box.holds(51) == "done"
    assert sqlite3.connect(path).execute("PRAGMA auto_vacuum").fetchone()[0] == 2
