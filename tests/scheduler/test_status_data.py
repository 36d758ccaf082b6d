"""The status page's data (scheduler.status) on both backends, from runs written the way the services write them."""

from __future__ import annotations

from datetime import timedelta

from falcon import testing
from pony.orm import db_session

from scheduler import outcomes, runs
from scheduler.db import Store
from scheduler.status import LATENCY_BOUNDS, StatusReport, percentile
from tests.scheduler.conftest import BASE

LONG_OUTPUT = "x" * 1000 + "the end"


def new(store: Store, name: str, org_id: int = 7, owner: str = "a@auth.local") -> int:
    return runs.create_run(store, runs.NewRun(BASE, name, owner, org_id, None, "manualy"))


def test_the_report_counts_what_the_pipeline_did(store: Store) -> None:
    # Results as a sandbox reports them: started in the past, ended by now (started_at + spend_time is the end;
    # an end in the future would fall in a minute the report does not show yet).
    ok = new(store, "fast.py")
    runs.mark_running(store, ok)
    two_ago = store.clock.now() - timedelta(seconds=2)
    runs.record_result(store, ok, runs.RunResult(True, 0, "ok", two_ago, 0.4, outcome=outcomes.SUCCESS))
    slow = new(store, "slow.py")
    runs.mark_running(store, slow)
    thirty_ago = store.clock.now() - timedelta(seconds=30)
    runs.record_result(store, slow, runs.RunResult(False, -1, LONG_OUTPUT, thirty_ago, 30, outcome=outcomes.TIME_LIMIT))
    broken = new(store, "broken.py")
    runs.mark_running(store, broken)
    runs.record_result(store, broken, runs.RunResult(False, 1, "Traceback <b>", two_ago, 1, outcome=outcomes.FAILED))
    limited = new(store, "busy.py")
    runs.fail_run(store, limited, "Running scripts too frequently", -1, outcome=outcomes.RATE_LIMITED)
    queued = new(store, "later.py", org_id=9)
    held = new(store, "held.py")
    store.write(lambda: store.db.execute(
        "UPDATE script_log SET dispatched_at = $now, sandbox_node = 'http://node-1:8088' WHERE id = $id",
        {"now": store.clock.now(), "id": held}))

    data = StatusReport(store).collect()

    assert data["queue"]["queued"] == 1 and data["queue"]["running"] == 0
    assert [t["team"] for t in data["queue"]["teams"]] == ["org:9"]
    assert data["nodes"] == [{"url": "http://node-1:8088", "reachable": None, "in_flight": 1}]
    minutes = data["minutes"]
    assert len(minutes["labels"]) == 180 and minutes["labels"][-1] == data["generated_at"][:16].replace("T", " ")
    totals = {kind: sum(values) for kind, values in minutes["series"].items()}
    assert totals == {"success": 1, "failed": 1, "time_limit": 1, "rate_limited": 1}
    assert list(minutes["series"]) == ["success", "failed", "time_limit", "rate_limited"]  # outcomes.ALL's order
    assert {kind: sum(values) for kind, values in data["hours"]["series"].items()} == totals
    assert len(data["hours"]["labels"]) == 168
    # time to result: the three runs that ran, not the rate-limited one
    assert data["latency"]["hour"]["runs"] == 3 and data["latency"]["day"]["runs"] == 3
    assert data["latency"]["hour"]["p50"] is not None and len(data["latency"]["by_hour"]["p95"]) == 48
    assert [s["script"] for s in data["slowest"]] == ["slow.py", "broken.py", "fast.py"]
    assert data["slowest"][0]["avg_seconds"] == 30
    assert {(f["script"], f["failures"]) for f in data["failing"]} == {
        ("slow.py", 1), ("broken.py", 1), ("busy.py", 1)}
    failures = data["recent_failures"]
    assert [f["id"] for f in failures] == [limited, broken, slow]
    assert failures[2]["output"].endswith("the end") and len(failures[2]["output"]) == 400
    assert failures[1]["output"] == "Traceback <b>" and failures[1]["outcome"] == "failed"
    assert queued not in [f["id"] for f in failures]


def test_old_rows_without_an_outcome_count_by_success(store: Store) -> None:
    """Rows finished before the outcome column existed (or by upstream's scheduler) show as success/failed."""
    run_id = new(store, "old.py")
    runs.record_result(store, run_id, runs.RunResult(False, 2, "x", spend_time=1))
    store.write(lambda: store.db.execute("UPDATE script_log SET outcome = NULL WHERE id = $id", {"id": run_id}))
    series = StatusReport(store).collect()["minutes"]["series"]
    assert {kind: sum(v) for kind, v in series.items()} == {"failed": 1}


def test_runs_outside_the_windows_are_left_out(store: Store) -> None:
    run_id = new(store, "ancient.py")
    runs.record_result(store, run_id, runs.RunResult(True, 0, "x", spend_time=1))
    long_ago = store.clock.now() - timedelta(days=9)
    store.write(lambda: store.db.execute(
        "UPDATE script_log SET created_at = $t, started_at = $t, finished_at = $t WHERE id = $id",
        {"t": long_ago, "id": run_id}))
    data = StatusReport(store).collect()
    assert data["hours"]["series"] == {} and data["slowest"] == [] and data["latency"]["day"]["runs"] == 0
    with db_session:
        assert store.db.select("SELECT outcome FROM script_log") == ["success"]


def test_percentile_interpolates_within_the_bucket() -> None:
    counts = [0] * len(LATENCY_BOUNDS)
    counts[2] = 10  # ten runs between 0.5 and 1 s
    assert percentile(counts, 0.5) == 0.75
    assert percentile([0] * len(LATENCY_BOUNDS), 0.5) is None


def test_the_page_is_off_without_its_token(client: testing.TestClient) -> None:
    assert client.simulate_get("/status/").status_code == 404
    assert client.simulate_get("/status/data").status_code == 404
