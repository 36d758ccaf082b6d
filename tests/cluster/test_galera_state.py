"""The run's state changes on a Galera cluster, through the scheduler's own code, each actor on its own node.

Row locks and SKIP LOCKED do not reach across nodes, so two actors can change the same run at once; Galera
refuses the one certified second (1213). These tests make that happen on purpose (one transaction is held open
between its last statement and its commit while the other commits) and check that the loser's transaction is
re-run whole and never taken as done, then let claimers, hand-offs and results race freely.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from pony.orm import db_session

from scheduler import callback_auth, lifecycle, queue, runs, texts
from scheduler.config import Config
from scheduler.db import Store, open_store, run_migrate
from tests.support.galera import GaleraCluster

T = TypeVar("T")
BASE = "0b5a4f2e-5d7c-4c6f-9a47-1e9d8b9f1a11"
NODE = "http://sandbox.invalid:8088"


class HeldStore(Store):
    """A Store whose next transaction stops between its last statement and its commit until released."""

    def __init__(self, store: Store) -> None:
        super().__init__(store.db, store.entities, store.mysql, store.clock)
        self.reached = threading.Event()
        self.release = threading.Event()
        self.attempts = 0

    def write(self, fn: Callable[[], T], attempts: int = 10) -> T:
        def held() -> T:
            self.attempts += 1
            result = fn()
            if self.attempts == 1:
                self.reached.set()
                assert self.release.wait(60), "never released"
            return result

        return super().write(held, attempts)


@pytest.fixture
def env(galera: GaleraCluster) -> Iterator[Callable[[int], dict[str, str]]]:
    database = galera.create_database()

    def for_node(index: int) -> dict[str, str]:
        db = galera.settings(index, database)
        return {"PYTHON_SCHEDULER_AUTH_TOKEN": "t", "SEATABLE_SERVER_URL": "http://127.0.0.1:9", **db.env()}

    run_migrate(Config.from_env(for_node(0)))
    try:
        yield for_node
    finally:
        galera.drop_database(database)


@pytest.fixture
def stores(env: Callable[[int], dict[str, str]]) -> Iterator[list[Store]]:
    """One Store per Galera node, set up as the dispatcher sets up its own (READ COMMITTED)."""
    opened = []
    for index in range(3):
        store = open_store(Config.from_env(env(index)))
        queue.read_committed(store)
        opened.append(store)
    try:
        yield opened
    finally:
        for store in opened:
            store.disconnect()


def create_runs(store: Store, count: int, teams: int = 1) -> list[int]:
    return [runs.create_run(store, runs.NewRun(BASE, "s.py", f"user{i % teams}@x", 10 + i % teams, None, "manualy"))
            for i in range(count)]


def claimer(store: Store, name: str) -> queue.Claim:
    return queue.Claim(store, name, lease_secs=300, window_secs=300, total_thread_count=100, rate_limit_percent=1.0)


def column(store: Store, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
    with db_session:
        return list(store.db.select(sql, params or {}))


def test_a_claim_that_lost_certification_is_run_again_and_takes_other_runs(stores: list[Store]) -> None:
    ids = create_runs(stores[0], 6)
    held = HeldStore(stores[1])
    results: dict[str, list[int]] = {}
    second = threading.Thread(target=lambda: results.update(
        second=[c.id for c in claimer(held, "second").claim(3)]))
    second.start()
    try:
        assert held.reached.wait(60)
        # node2 has selected and marked its three runs, uncommitted; node1 does not see its row locks.
        first = [c.id for c in claimer(stores[0], "first").claim(3)]
    finally:
        held.release.set()
        second.join(60)
    assert first == ids[:3], "the first claim should take the oldest runs"
    assert held.attempts == 2, "the second claim must have lost certification and been run again"
    assert results["second"] == ids[3:], "the re-run claim must take the runs the first did not"
    claimed_by = dict(column(stores[2], "SELECT id, claimed_by FROM script_log"))
    assert claimed_by == {**dict.fromkeys(ids[:3], "first"), **dict.fromkeys(ids[3:], "second")}


def test_a_result_and_the_sweep_on_two_nodes_end_the_run_once(stores: list[Store]) -> None:
    """The sandbox's result (API on node3) and the sweep's "sandbox lost" (node1) for the same run."""
    first_lost, second_result = create_runs(stores[0], 2)
    result = runs.RunResult(success=True, return_code=0, output="the real output", spend_time=1.0)
    for run_id in (first_lost, second_result):
        assert runs.mark_running(stores[0], run_id) is runs.Outcome.APPLIED

    # The result's transaction is held open; the sweep commits first: the result must not overwrite it.
    held = HeldStore(stores[2])
    outcome: list[runs.Outcome] = []
    late = threading.Thread(target=lambda: outcome.append(runs.record_result(held, first_lost, result)))
    late.start()
    try:
        assert held.reached.wait(60)
        assert runs.fail_run(stores[0], first_lost, texts.SANDBOX_LOST) is runs.Outcome.APPLIED
    finally:
        held.release.set()
        late.join(60)
    assert held.attempts == 2 and outcome == [runs.Outcome.ALREADY_FINISHED]

    # The other way round: the sweep's transaction is held, the result commits first and is counted once.
    held = HeldStore(stores[0])
    swept: list[runs.Outcome] = []
    sweep = threading.Thread(target=lambda: swept.append(runs.fail_run(held, second_result, texts.SANDBOX_LOST)))
    sweep.start()
    try:
        assert held.reached.wait(60)
        assert runs.record_result(stores[2], second_result, result) is runs.Outcome.APPLIED
    finally:
        held.release.set()
        sweep.join(60)
    assert held.attempts == 2 and swept == [runs.Outcome.ALREADY_FINISHED]

    rows = dict(column(stores[1], "SELECT id, output FROM script_log"))
    assert rows == {first_lost: texts.SANDBOX_LOST, second_result: "the real output"}
    counted = column(stores[1], "SELECT SUM(total_run_count) FROM dtable_run_script_statistics")
    assert counted == [1], "only the sandbox's result is counted, once"


def test_claims_hand_offs_and_results_racing_on_three_nodes(stores: list[Store], galera: GaleraCluster) -> None:
    """Two claimers (node1, node2) claim and mark hand-offs as fast as they can while a third actor (node3)
    reports each handed-off run running and finished with the run's own callback secret (the digest written with
    the hand-off, through another node): every run is claimed, handed off and finished once.
    SEATABLE_CLUSTER_RACE_RUNS sets the burst (300 here; docs/cluster.md has the full form's 2,000)."""
    total = int(os.environ.get("SEATABLE_CLUSTER_RACE_RUNS", "300"))
    ids = create_runs(stores[0], total, teams=5)
    before = certification_conflicts(galera)
    handed: dict[str, list[int]] = {"d1": [], "d2": []}
    run_secrets: dict[int, str] = {}
    errors: list[BaseException] = []
    done_claiming = threading.Event()

    def dispatch(name: str, store: Store) -> None:
        claim = claimer(store, name)
        idle = 0
        try:
            while idle < 3:
                claimed = claim.claim(7)
                if not claimed:
                    idle += 1
                    continue
                idle = 0
                deadline = store.clock.now() + timedelta(seconds=300)
                issued = {c.id: callback_auth.issue() for c in claimed}  # each hand-off's callback secret
                run_secrets.update({run_id: secret for run_id, (secret, _) in issued.items()})
                ours = lifecycle.hand_off(store, name, {c.id: NODE for c in claimed}, deadline,
                                          {run_id: digest for run_id, (_, digest) in issued.items()})
                assert ours == {c.id for c in claimed}, "a committed claim must stay ours until the hand-off"
                handed[name].extend(sorted(ours))
        except BaseException as exc:
            errors.append(exc)

    def report(store: Store) -> None:
        finished: set[int] = set()
        try:
            while not (done_claiming.is_set() and len(finished) == len(handed["d1"]) + len(handed["d2"])):
                for run_id in [*handed["d1"], *handed["d2"]]:
                    if run_id in finished:
                        continue
                    # As the sandbox's callbacks: the run's own secret, checked against the replicated digest.
                    credential = callback_auth.Credential(run_secrets[run_id])
                    runs.mark_running(store, run_id, credential=credential)
                    result = runs.RunResult(success=True, return_code=0, output=f"run {run_id}", spend_time=0.1)
                    assert runs.record_result(store, run_id, result, credential) is runs.Outcome.APPLIED
                    finished.add(run_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=dispatch, args=("d1", stores[0])),
               threading.Thread(target=dispatch, args=("d2", stores[1]))]
    reporter = threading.Thread(target=report, args=(stores[2],))
    for thread in [*threads, reporter]:
        thread.start()
    budget = 300 * max(1.0, total / 300)  # seconds for each side, as for the 300-run form
    for thread in threads:
        thread.join(budget)
    done_claiming.set()
    reporter.join(budget)
    assert not errors, errors

    assert not set(handed["d1"]) & set(handed["d2"]), "a run was handed off by both dispatchers"
    assert sorted(handed["d1"] + handed["d2"]) == ids
    rows = column(stores[2], "SELECT id, claimed_by, state, output FROM script_log")
    assert Counter(r[2] for r in rows) == {"finished": total}
    owner = {run_id: name for name, handed_off in handed.items() for run_id in handed_off}
    assert all(claimed_by == owner[run_id] and output == f"run {run_id}" for run_id, claimed_by, _, output in rows)
    counted = column(stores[1], "SELECT SUM(total_run_count) FROM dtable_run_script_statistics")
    assert counted == [total]
    conflicts = certification_conflicts(galera) - before
    print(f"{total} runs: d1 {len(handed['d1'])}, d2 {len(handed['d2'])} handed off; "
          f"{conflicts} certification conflicts and aborts retried")


def certification_conflicts(galera: GaleraCluster) -> int:
    """Local certification failures plus brute-force aborts, over all nodes (Galera's own counters)."""
    total = 0
    for node in galera.nodes:
        with contextlib.suppress(Exception):
            values = node.status("wsrep_local_cert_failures", "wsrep_local_bf_aborts")
            total += sum(int(v) for v in values.values())
    return total


def test_every_scheduler_session_reads_causally(stores: list[Store]) -> None:
    """A run created through one node is found at once through another (an API instance behind a balancer)."""
    for store in stores:
        assert column(store, "SELECT @@session.wsrep_sync_wait") == [1]
    for i in range(30):
        run_id = create_runs(stores[i % 3], 1)[0]
        assert runs.get_run(stores[(i + 1) % 3], run_id) is not None
