"""Run counters in the database (scheduler/counters.py) on both backends: each change counted once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from scheduler import counters, outcomes, runs
from scheduler.db import Store
from tests.scheduler.conftest import BASE


def new(store: Store) -> int:
    return runs.create_run(store, runs.NewRun(BASE, "a.py", "o@auth.local", 7, None, "manualy"))


def test_each_change_is_counted_once(store: Store) -> None:
    first, second = new(store), new(store)
    waited: list[float] = []
    assert runs.mark_running(store, first, waited=waited.append) is runs.Outcome.APPLIED
    assert runs.mark_running(store, first, waited=waited.append) is runs.Outcome.APPLIED  # a duplicate callback
    assert len(waited) == 1 and waited[0] >= 0
    result = runs.RunResult(True, 0, "ok", spend_time=1, outcome=outcomes.SUCCESS)
    assert runs.record_result(store, first, result) is runs.Outcome.APPLIED
    assert runs.record_result(store, first, result) is runs.Outcome.ALREADY_FINISHED
    runs.fail_run(store, second, "Running scripts too frequently", -1, outcome=outcomes.RATE_LIMITED)
    assert counters.read(store) == {
        (counters.CREATED, ""): 2,
        (counters.STARTED, ""): 1,
        (counters.FINISHED, outcomes.SUCCESS): 1,
        (counters.FINISHED, outcomes.RATE_LIMITED): 1,
    }


def test_a_result_without_a_running_callback_counts_as_started(store: Store) -> None:
    run_id = new(store)
    runs.record_result(store, run_id, runs.RunResult(False, 1, "boom", spend_time=1))
    totals = counters.read(store)
    assert totals[(counters.STARTED, "")] == 1 and totals[(counters.FINISHED, outcomes.FAILED)] == 1


def test_concurrent_bumps_add_up(store: Store) -> None:
    """Many transactions at once, on the shards of one counter: nothing is lost (row locks / the write lock)."""

    def bump(n: int) -> None:
        store.write(lambda: counters.bump(store, counters.HANDOFF_ERROR, "busy", n=2, key=n))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(bump, range(200)))
    counters.add(store, {(counters.HANDOFF_ERROR, "busy"): 1, (counters.HANDOFF_ERROR, "refused"): 0})
    assert counters.read(store) == {(counters.HANDOFF_ERROR, "busy"): 401}
