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


class Receiver:
    """A scheduler stand-in recording every callback; `answer` picks the status, `stop()` takes it down."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.calls: list[Call] = []
        self.answer: Callable[[str, dict[str, object]], int] = lambda path, body: 200
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = receiver.answer(self.path, body)
                with receiver._lock:
                    receiver.calls.append(
                        Call(self.path, self.headers.get("Authorization", ""),
                             self.headers.get("Content-Type", ""), body, status)
                    )
                payload = b'{"success": true}'
                self.send_response(status)
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
        box = Outbox(path or tmp_path / "outbox.sqlite", receiver.url, TOKEN, **kw)
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
    assert box.run_accepted(41)
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


@pytest.mark.parametrize("transient", [500, 502, 408, 429])
def test_permanent_4xx_dropped_transient_retried(
    receiver: Receiver, make_outbox: Callable[..., Outbox], caplog: pytest.LogCaptureFixture, transient: int
) -> None:
    tries: dict[int, int] = {}

    def answer(path: str, body: dict[str, object]) -> int:
        sid = int(body["script_id"])  # type: ignore[call-overload]
        tries[sid] = tries.get(sid, 0) + 1
        if sid == 7:
            return 404  # unknown run
        if sid == 8 and tries[sid] <= 3:
            return transient
        return 200

    receiver.answer = answer
    caplog.set_level(logging.DEBUG, logger="sandbox.outbox")
    box = make_outbox()
    box.start()
    for sid in (7, 8):
        box.running(sid, 3.0)
        box.result(sid, result_body(sid))
    assert box.flush(5)
    assert tries[7] == 2  # each entry tried once; the dropped running callback releases the result
    assert [c.body["script_id"] for c in receiver.ok("/script-result/")] == [8]
    assert (box.stats.delivered, box.stats.retried, box.stats.dropped) == (2, 3, 2)
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert drops == ["outbox: dropped running callback for script 7: HTTP 404 (permanent)",
                     "outbox: dropped result callback for script 7: HTTP 404 (permanent)"]
    assert TOKEN not in caplog.text and SECRET_OUTPUT not in caplog.text


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
    assert wait_until(lambda: len(receiver.ok()) == 4, timeout=2)
    assert time.monotonic() - t0 < 1.0  # woken on enqueue, not held behind script 1's backoff
    # The receiver records a call before the outbox has read the 200 and deleted the entry: wait for that.
    assert wait_until(lambda: box.pending() == 1, timeout=2), box.pending()


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
