"""/metrics of the real scheduler (two gunicorn workers, dispatcher in another process) and the real sandbox."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from scheduler import outcomes
from tests.operators.conftest import Ops
from tests.support.metrics import samples, value
from tests.support.pipeline import REPO


def test_metrics_need_the_metrics_token(ops: Ops) -> None:
    assert ops.scheduler_metrics("wrong").status_code == 403
    assert requests.get(ops.pipeline.scheduler_url + "/metrics", timeout=10).status_code == 403
    # SeaTable's secret is not the metrics credential once a metrics token is set
    assert ops.scheduler_metrics(ops.pipeline.secret).status_code == 403
    assert ops.sandbox_metrics("wrong").status_code == 403
    assert ops.sandbox_metrics(ops.pipeline.sandbox_token).status_code == 403
    answer = ops.scheduler_metrics()
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain")
    token_form = requests.get(ops.pipeline.scheduler_url + "/metrics", timeout=10,
                              headers={"Authorization": f"Token {ops.metrics_token}"})
    assert token_form.status_code == 200


def script_log(ops: Ops) -> list[tuple[str, str, str | None, str | None, int]]:
    """(script_name, state, outcome, sandbox_node, attempt) of every run, from the scheduler's database."""
    from pony.orm import db_session

    from scheduler.config import Config
    from scheduler.db import open_store

    store = open_store(Config.from_env(ops.pipeline.scheduler_env()))
    try:
        with db_session:
            return list(store.db.select("SELECT script_name, state, outcome, sandbox_node, attempt FROM script_log"))
    finally:
        store.disconnect()


def test_scheduler_counts_every_run_once_across_workers_and_processes(ops: Ops) -> None:
    assert ops.runs["hello.py"]["success"] is True
    assert ops.runs["broken.py"]["return_code"] == 3
    assert ops.runs["missing.py"]["output"].startswith("Fail to get script")
    rows = script_log(ops)
    assert all(row[1] == "finished" for row in rows)
    by_outcome = {o: sum(1 for row in rows if row[2] == o) for o in outcomes.ALL}
    assert by_outcome["success"] >= 1 and by_outcome["failed"] >= 1 and by_outcome["fetch_failed"] >= 1
    ran = sum(1 for row in rows if row[3] is not None)  # handed to the sandbox
    # Several scrapes land on both workers; each must show the same totals (multiprocess mode sums them), and
    # the totals are exactly what the database holds, though the API, the dispatcher and the sandbox counted.
    for text in [ops.scheduler_metrics().text for _ in range(6)]:
        assert value(text, "seatable_scheduler_runs_created_total") == len(rows)
        assert value(text, "seatable_scheduler_runs_claimed_total") == sum(row[4] for row in rows)  # retries too
        assert value(text, "seatable_scheduler_runs_handed_off_total") == ran
        assert value(text, "seatable_scheduler_runs_started_total") == ran
        finished = {o: value(text, "seatable_scheduler_runs_finished_total", outcome=o) for o in outcomes.ALL}
        assert finished == by_outcome
        durations = sum(value(text, "seatable_scheduler_run_duration_seconds_count", outcome=o)
                        for o in ("success", "failed"))
        assert durations == ran
        assert value(text, "seatable_scheduler_time_to_start_seconds_count") == ran
        assert value(text, "seatable_scheduler_queued_runs") == 0
        assert value(text, "seatable_scheduler_database_up") == 1
        assert all(value(text, "seatable_scheduler_handoff_errors_total", cause=c) == 0
                   for c in ("not_reachable", "busy", "refused", "rejected", "uncertain", "lease_lost"))


def test_outcome_is_stored_with_the_run(ops: Ops) -> None:
    outcome_of = {row[0]: row[2] for row in script_log(ops)}
    assert (outcome_of["hello.py"], outcome_of["broken.py"], outcome_of["missing.py"]) == (
        "success", "failed", "fetch_failed")


def test_refused_callbacks_are_counted_by_cause(ops: Ops) -> None:
    before = ops.scheduler_metrics().text
    url = ops.pipeline.scheduler_url
    assert requests.post(url + "/script-result/", json={"script_id": 1}, timeout=10).status_code == 403
    auth = {"Authorization": f"Token {ops.pipeline.secret}"}
    unknown = requests.post(url + "/script-result/", json={"script_id": 99999}, headers=auth, timeout=10)
    assert unknown.status_code == 404
    assert requests.post(url + "/script-running-callback/", data=b"[", headers=auth, timeout=10).status_code == 400
    after = ops.scheduler_metrics().text

    def grew(callback: str, cause: str) -> float:
        name = "seatable_scheduler_callback_errors_total"
        return value(after, name, callback=callback, cause=cause) - value(before, name, callback=callback, cause=cause)

    assert (grew("result", "forbidden"), grew("result", "unknown_run"), grew("running", "bad_request")) == (1, 1, 1)


def test_queue_gauges_show_a_waiting_run_per_team(ops: Ops) -> None:
    """A run waits while the dispatcher is stopped (SIGSTOP): the gauges show it, per team and in all."""
    button = ops.pipeline.button()
    dispatcher = next(s for s in ops.pipeline.services if s.name == "dispatcher")
    os.killpg(dispatcher.process.pid, signal.SIGSTOP)
    try:
        run_id = button.submit(ops.base_uuid, "hello.py", owner="queue@auth.local", org_id=-1)
        time.sleep(1.1)
        text = ops.scheduler_metrics().text
        assert value(text, "seatable_scheduler_queued_runs") == 1
        assert value(text, "seatable_scheduler_team_queued_runs", team="user:queue@auth.local") == 1
        assert value(text, "seatable_scheduler_queued_oldest_seconds") >= 1
    finally:
        os.killpg(dispatcher.process.pid, signal.SIGCONT)
    final = button.wait(run_id, ops.base_uuid, "hello.py", deadline=120)
    assert final["success"] is True
    assert value(ops.scheduler_metrics().text, "seatable_scheduler_queued_runs") == 0


def test_sandbox_metrics(ops: Ops) -> None:
    answer = ops.sandbox_metrics()
    assert answer.status_code == 200, answer.text
    text = answer.text
    assert value(text, "seatable_sandbox_runs_finished_total", outcome="success") >= 1
    assert value(text, "seatable_sandbox_runs_finished_total", outcome="failed") >= 1
    assert value(text, "seatable_sandbox_run_duration_seconds_count", outcome="failed") >= 1
    assert value(text, "seatable_sandbox_runs_accepted_total") >= 2
    assert value(text, "seatable_sandbox_podman_up") == 1
    slots = value(text, "seatable_sandbox_slots", state="free") + value(text, "seatable_sandbox_slots", state="busy")
    assert slots == 4
    assert value(text, "seatable_sandbox_outbox_pending") == 0
    found = samples(text)
    modes = {dict(labels)["limit"]: dict(labels)["mode"] for (name, labels), v in found.items()
             if name == "seatable_sandbox_enforcement" and v == 1}
    health = ops.pipeline.sandbox.health()["limits"] if ops.pipeline.sandbox else {}
    assert modes == {"memory": health["memory"], "pids": health["pids"], "cpu": health["cpu"]}
    assert value(text, "seatable_sandbox_limits_mechanism", mechanism=health["mechanism"]) == 1
    held = value(text, "seatable_sandbox_runner_uids", state="held")
    assert held + value(text, "seatable_sandbox_runner_uids", state="free") == (
        ops.pipeline.sandbox.health()["isolation"]["runner_uids"]["capacity"] if ops.pipeline.sandbox else 0)
    assert value(text, "seatable_sandbox_runner_network", mode="seatable") == 1
    hits = value(text, "seatable_sandbox_warm_pool_takes_total", result="hit")
    misses = value(text, "seatable_sandbox_warm_pool_takes_total", result="miss")
    assert hits + misses == value(text, "seatable_sandbox_runs_accepted_total")
    assert value(text, "seatable_sandbox_warm_pool_ended_before_ready_total") == 0
    assert value(text, "seatable_sandbox_runner_containers") >= value(text, "seatable_sandbox_warm_pool_idle")


def test_each_start_of_the_api_gets_a_fresh_metrics_directory(tmp_path: Path) -> None:
    """Counters do not carry over from an earlier start; a dead start's directory is removed at the next."""
    stale = tmp_path / "seatable-scheduler-metrics-999999999"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"old")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PYTHON_", "PROMETHEUS"))}
    env.update({"PYTHONPATH": str(REPO), "XDG_RUNTIME_DIR": str(tmp_path), "PYTHON_SCHEDULER_AUTH_TOKEN": "t" * 20,
                "PYTHON_SCHEDULER_SQLITE_PATH": str(tmp_path / "db.sqlite3"), "PYTHON_SCHEDULER_PORT": "0",
                "PYTHON_SCHEDULER_WORKERS": "2"})
    from tests.support.podman import free_port

    port = free_port()
    env["PYTHON_SCHEDULER_PORT"] = str(port)
    with open(tmp_path / "serve.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "scheduler.cli", "serve", "--migrate"], cwd=REPO, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping/", timeout=1).ok:
                    break
            except requests.RequestException:  # not listening yet, or the worker still importing
                pass
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        assert not stale.exists()
        assert [p.name for p in tmp_path.glob("seatable-scheduler-metrics-*")] == [
            f"seatable-scheduler-metrics-{process.pid}"
        ]
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10,
                               headers={"Authorization": "Bearer " + "t" * 20})
        assert metrics.status_code == 200 and "seatable_scheduler_time_to_start_seconds_count 0.0" in metrics.text
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert list(tmp_path.glob("seatable-scheduler-metrics-*")) == []
