"""The state machine's transitions on a real database: a transition from a stage the table forbids changes
nothing (tests/unit/test_lifecycle.py checks the table and its guards without a database)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from scheduler import lifecycle, texts
from scheduler.db import Store
from scheduler.lifecycle import NewRun, Outcome, RunResult

BASE = "0b5a4f2e-5d7c-4c6f-9a47-1e9d8b9f1a11"
NODE = "http://sandbox.invalid:8088"
COLUMNS = "state, claimed_by, lease_until, dispatched_at, sandbox_node, started_at, finished_at, output, attempt"


def new_run(store: Store) -> int:
    return lifecycle.create(store, NewRun(BASE, "s.py", "u@x", 10, None, "manualy"))


def claim_all(store: Store, me: str) -> list[int]:
    return [int(r[0]) for r in lifecycle.claim(store, me, 60, lambda now: [("1 = 1", {}, 100)])]


def hand_off(store: Store, me: str, run_id: int) -> set[int]:
    return lifecycle.hand_off(store, me, {run_id: NODE}, store.clock.now() + timedelta(seconds=60))


def row(store: Store, run_id: int) -> tuple[Any, ...]:
    with store.reading():
        return tuple(store.select(f"SELECT {COLUMNS} FROM script_log WHERE id = $i", {"i": run_id})[0])


def test_a_finished_run_takes_no_further_transition(store: Store) -> None:
    run_id = new_run(store)
    assert claim_all(store, "d1") == [run_id]
    assert hand_off(store, "d1", run_id) == {run_id}
    assert lifecycle.fail(store, run_id, texts.SANDBOX_LOST) is Outcome.APPLIED
    before = row(store, run_id)

    assert claim_all(store, "d2") == []
    assert hand_off(store, "d1", run_id) == set()
    assert lifecycle.release(store, "d1", [run_id]) == 0
    assert lifecycle.requeue(store, [run_id], NODE) == 0
    assert lifecycle.renew(store, [run_id], store.clock.now() + timedelta(hours=1)) == 0
    assert lifecycle.start(store, run_id) is Outcome.ALREADY_FINISHED
    result = RunResult(success=True, return_code=0, output="late")
    assert lifecycle.finish(store, run_id, result) is Outcome.ALREADY_FINISHED
    assert row(store, run_id) == before


def test_a_run_that_started_is_never_requeued_or_released(store: Store) -> None:
    run_id = new_run(store)
    claim_all(store, "d1")
    hand_off(store, "d1", run_id)
    assert lifecycle.start(store, run_id) is Outcome.APPLIED
    before = row(store, run_id)
    assert lifecycle.requeue(store, [run_id], NODE) == 0
    assert lifecycle.release(store, "d1", [run_id]) == 0
    assert row(store, run_id) == before and before[0] == "running" and before[4] == NODE


def test_only_the_claimer_hands_off_or_releases(store: Store) -> None:
    run_id = new_run(store)
    claim_all(store, "d1")
    assert claim_all(store, "d2") == [], "a live claim is not taken twice"
    assert hand_off(store, "d2", run_id) == set()
    assert lifecycle.release(store, "d2", [run_id]) == 0
    assert row(store, run_id)[1] == "d1"
    assert hand_off(store, "d1", run_id) == {run_id}
    assert lifecycle.release(store, "d1", [run_id]) == 0, "handed off: only the node's word may requeue it"


def test_a_requeued_run_is_not_renewed_and_stays_claimable(store: Store) -> None:
    """The sweep reads its handed-off runs, asks the nodes, then renews: a run requeued in between (the
    dispatcher's "never sent") keeps no deadline that would keep it out of the queue."""
    run_id = new_run(store)
    claim_all(store, "d1")
    hand_off(store, "d1", run_id)
    assert lifecycle.requeue(store, [run_id], NODE) == 1
    assert lifecycle.renew(store, [run_id], store.clock.now() + timedelta(hours=1)) == 0
    assert row(store, run_id)[1:5] == (None, None, None, None)
    assert claim_all(store, "d2") == [run_id]
    assert row(store, run_id)[8] == 2, "the second claim is the run's second attempt"


def test_a_refusal_of_the_admit_check_changes_nothing(store: Store) -> None:
    """What a callback must pass (its run's secret, its next legal transition) sees the locked row and can
    refuse: the run stays as it was."""
    run_id = new_run(store)
    claim_all(store, "d1")
    hand_off(store, "d1", run_id)
    seen: list[Any] = []

    def refuse(locked: Any, reported: Any) -> Any:
        seen.append(locked.state)
        raise PermissionError("not this run's secret")

    before = row(store, run_id)
    with pytest.raises(PermissionError):
        lifecycle.start(store, run_id, admit=refuse)
    with pytest.raises(PermissionError):
        lifecycle.finish(store, run_id, RunResult(success=True, return_code=0, output="x"), admit=refuse)
    assert seen == ["pending", "pending"]
    assert row(store, run_id) == before


def test_what_the_admit_check_answers_is_stored(store: Store) -> None:
    """A time the scheduler cannot believe is replaced, a result amended, by what the check answers."""
    run_id = new_run(store)
    claim_all(store, "d1")
    hand_off(store, "d1", run_id)
    arrival = store.clock.now().replace(microsecond=0)
    future = arrival + timedelta(days=365)
    assert lifecycle.start(store, run_id, future, admit=lambda locked, started: arrival) is Outcome.APPLIED
    assert lifecycle.as_datetime(row(store, run_id)[5]) == arrival

    def amend(locked: Any, reported: RunResult) -> RunResult:
        assert locked.state == "running"
        return RunResult(success=False, return_code=reported.return_code, output="amended", spend_time=1.0)

    result = RunResult(success=True, return_code=0, output="as reported", spend_time=1e6)
    assert lifecycle.finish(store, run_id, result, admit=amend) is Outcome.APPLIED
    assert row(store, run_id)[0] == "finished" and row(store, run_id)[7] == "amended"
