"""The sandbox's callbacks, as its own code builds and sends them, are what the scheduler reads (pipeline_contract).

The real RunService and outbox (a scripted driver stands in for Podman) deliver over real HTTP to the real
scheduler app, in this process. Every body they send keeps the closed contract (a field added on the sandbox's
side only fails here) and is stored as sent, never salvaged as malformed. Every callback the contract calls valid
(drawn by schemathesis) is accepted the same way.
"""

from __future__ import annotations

import io
import json
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server

import pytest
from falcon import testing
from hypothesis import given
from pony.orm import db_session

from pipeline_contract import Message
from pipeline_contract import schemas as contract
from sandbox import texts as sandbox_texts
from sandbox.driver import Job, RunResult
from sandbox.outbox import Outbox
from sandbox.runs import RUNNING_CALLBACK_DELAY, RunRequest, RunService
from scheduler import runs
from scheduler.app import create_app
from scheduler.config import Config
from scheduler.db import Store
from tests.scheduler.conftest import _QuietHandler, hand_off, new_run
from tests.support.contract_examples import FEWER, examples

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
CALLBACKS = {"/script-running-callback/": contract.RUNNING_CALLBACK, "/script-result/": contract.RESULT_CALLBACK}
NOTICE = "invalid fields"  # scheduler.texts.RESULT_MALFORMED: the scheduler salvaged a body it could not read

# What the driver observes for each kind (sandbox.driver.RunResult), and the output the script left.
OBSERVED: dict[str, tuple[int | None, str]] = {
    "success": (0, "exited"), "failed": (1, "exited"), "time_limit": (None, "timeout"),
    "output_limit": (None, "output_limit"), "out_of_memory": (137, "out_of_memory"),
    "cpu_limit": (128 + signal.SIGXCPU, "signal"), "killed_by_signal": (137, "signal"),
    "sandbox_error": (None, "error"),
}


@dataclass
class ScriptedDriver:
    """Stands in for Podman: each run "starts" (the running callback) and ends as told, after long enough for its
    running callback to go out, unless it is `quick` (then its result stands in for it)."""

    results: dict[int, RunResult] = field(default_factory=dict)
    quick: set[int] = field(default_factory=set)

    def run(self, job: Job, timeout: int, on_container: Any, on_started: Any, runner: Any = None) -> RunResult:
        on_container(f"runner-{job.script_id}")
        on_started(time.time())
        if job.script_id not in self.quick:
            time.sleep(RUNNING_CALLBACK_DELAY + 0.3)
        return self.results[job.script_id]

    def cleanup(self, container: str) -> bool:
        return True

    def orphans(self) -> list[str]:
        return []


@dataclass
class Scheduler:
    """The scheduler app served over real HTTP in this process, recording every body that reaches it."""

    url: str
    client: testing.TestClient
    bodies: list[tuple[str, Any]]


@pytest.fixture
def scheduler_http(config: Config, store: Store) -> Iterator[Scheduler]:
    app = create_app(replace(config, max_body_bytes=150_000), store=store)
    bodies: list[tuple[str, Any]] = []

    def recording(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(raw)
        try:
            bodies.append((environ["PATH_INFO"], json.loads(raw)))
        except ValueError:
            bodies.append((environ["PATH_INFO"], None))
        return app(environ, start_response)

    server = make_server("127.0.0.1", 0, recording, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield Scheduler(f"http://127.0.0.1:{server.server_port}", testing.TestClient(app), bodies)
    server.shutdown()
    server.server_close()


def queued(client: testing.TestClient, store: Store) -> tuple[int, str]:
    """A new run (no team limit: no SeaTable to ask) handed off as the dispatcher does, and its callback secret."""
    run_id = new_run(client, scripts_running_limit=-1)
    return run_id, hand_off(store, run_id)


def outcome_of(store: Store, run_id: int) -> str:
    with db_session:
        return str(store.db.select("SELECT outcome FROM script_log WHERE id = $i", {"i": run_id})[0])


def deliver(outbox: Outbox) -> None:
    outbox.start()
    try:
        assert outbox.flush(timeout=60), "the outbox did not deliver everything"
    finally:
        outbox.stop()


def test_what_the_sandbox_sends_is_what_the_scheduler_reads(scheduler_http: Scheduler, store: Store,
                                                            tmp_path: Path) -> None:
    client = scheduler_http.client
    # Results bounded below the scheduler's body limit, as PYTHON_SCHEDULER_MAX_BODY_BYTES says.
    outbox = Outbox(tmp_path / "outbox.sqlite", scheduler_http.url, max_backoff=0.2, timeout=5,
                    max_body_bytes=120_000)
    driver = ScriptedDriver()
    service = RunService(driver=driver, outbox=outbox, slots=len(OBSERVED) + 2, timeout=30)
    outbox.start()  # running callbacks go out while their runs run
    expected: dict[int, tuple[str, str]] = {}  # run id -> (outcome, output)
    # Every outcome, and a second success that ends before its running callback is due.
    for kind, quick in [*((kind, False) for kind in OBSERVED), ("success", True)]:
        code, how = OBSERVED[kind]
        run_id, secret = queued(client, store)
        if quick:
            driver.quick.add(run_id)
        output = f"{kind} ✓\n" + ("x" * 300_000 if kind == "output_limit" else "")  # too big: cut to fit
        driver.results[run_id] = RunResult(code, output, time.time(), 0.25, how)
        expected[run_id] = (kind, output)
        service.submit(RunRequest(run_id, {"api_token": "t"}, {"row": {"_id": "r"}}, script_content="print(1)",
                                  callback_secret=secret))
    unreachable, secret = queued(client, store)  # a script URL it may not fetch: fetch_failed, before any runner
    service.submit(RunRequest(unreachable, {}, None, script_url="http://127.0.0.1:9/never.py",
                              callback_secret=secret))
    # Loopback: the sandbox's own download obeys the runners' egress rules (issue 20), so it never connects.
    expected[unreachable] = ("fetch_failed", sandbox_texts.FETCH_REFUSED.format(reason="127.0.0.1:9: loopback address"))
    service.shutdown(wait=True)
    lost, secret = queued(client, store)  # accepted, then the sandbox restarted: reported lost by the next start
    assert outbox.run_accepted(lost, secret)
    assert RunService(driver=ScriptedDriver(), outbox=outbox, slots=1, timeout=30).recover() == 1
    expected[lost] = ("sandbox_lost", sandbox_texts.SANDBOX_LOST)
    deliver(outbox)

    assert scheduler_http.bodies, "nothing was delivered"
    for path, body in scheduler_http.bodies:
        assert CALLBACKS[path].closed().problems(body) == [], (path, body)
    started = {body["script_id"] for path, body in scheduler_http.bodies if path == "/script-running-callback/"}
    assert started == set(expected) - {unreachable, lost} - driver.quick  # only runs that reached a runner started
    [quick_id] = driver.quick
    stored_quick = runs.get_run(store, quick_id)
    assert stored_quick is not None and stored_quick["started_at"] != "", stored_quick  # from its result
    for run_id, (kind, output) in expected.items():
        stored = runs.get_run(store, run_id)
        assert stored is not None and stored["state"] == "finished", (kind, stored)
        assert NOTICE not in stored["output"], (kind, stored["output"][:300])
        assert stored["success"] is (kind == "success") and outcome_of(store, run_id) == kind
        if kind == "output_limit":
            assert stored["output"].startswith(output[:1000]) and len(stored["output"].encode()) < 120_000
        else:
            assert stored["output"] == output


def test_a_result_the_scheduler_refuses_comes_back_as_the_contracts_minimal_result(
        scheduler_http: Scheduler, store: Store, tmp_path: Path) -> None:
    """Misconfigured limits (the sandbox's above the scheduler's): 413, then the outbox's replacement, read as is."""
    run_id, secret = queued(scheduler_http.client, store)
    outbox = Outbox(tmp_path / "outbox.sqlite", scheduler_http.url, max_backoff=0.2, timeout=5)
    assert outbox.run_accepted(run_id, secret)
    outbox.result(run_id, RunResult(0, "y" * 400_000, time.time(), 1.0, "exited").body(run_id))
    deliver(outbox)
    minimal = [body for path, body in scheduler_http.bodies if len(json.dumps(body)) < 150_000]
    assert len(minimal) == 1 and contract.RESULT_CALLBACK.closed().problems(minimal[0]) == []
    stored = runs.get_run(store, run_id)
    assert stored is not None and stored["success"] is False and NOTICE not in stored["output"]
    assert stored["output"] == sandbox_texts.RESULT_REFUSED.format(status=413)


def accepted(scheduler: Scheduler, store: Store, path: str, message: Message, body: dict[str, Any]) -> None:
    run_id, secret = queued(scheduler.client, store)
    # What the schema cannot bound, the run's own history does: a start after the run was created and not in the
    # future, a duration since that start (scheduler.callback_auth; tests/scheduler/test_callbacks.py).
    if body.get("started_at") is not None:
        body = {**body, "started_at": time.time()}
    if body.get("spend_time") is not None:
        body = {**body, "spend_time": min(float(body["spend_time"]), 1.0)}
    answer = scheduler.client.simulate_post(path, json={**body, "script_id": run_id},
                                            headers={"Authorization": f"Token {secret}"})
    assert (answer.status_code, answer.json) == (200, {"success": True}), answer.text
    assert contract.CALLBACK_ACK.closed().problems(answer.json) == []
    stored = runs.get_run(store, run_id)
    assert stored is not None
    if message is contract.RESULT_CALLBACK:
        assert stored["state"] == "finished" and NOTICE not in (stored["output"] or ""), stored["output"]
    else:
        assert stored["state"] == "running"


def test_every_callback_the_contract_calls_valid_is_read_as_sent(scheduler_http: Scheduler, store: Store) -> None:
    @FEWER
    @given(body=examples(contract.RUNNING_CALLBACK))
    def running(body: dict[str, Any]) -> None:
        accepted(scheduler_http, store, "/script-running-callback/", contract.RUNNING_CALLBACK, body)

    @FEWER
    @given(body=examples(contract.RESULT_CALLBACK))
    def result(body: dict[str, Any]) -> None:
        accepted(scheduler_http, store, "/script-result/", contract.RESULT_CALLBACK, body)

    running()
    result()
