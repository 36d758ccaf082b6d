"""The run's state machine: its stages, the legal transitions, and the only code that writes them.

`script_log.state` keeps upstream's three values (DESIGN.md, property 7); the dispatch columns say where a
pending run is on its way to a sandbox. Together they give five stages:

  pending      state 'pending', not handed off, no live claim (a lease_until ahead with no claimer delays it)
  claimed      state 'pending', claimed_by and lease_until set by a dispatcher, dispatched_at NULL
  handing off  state 'pending', dispatched_at and sandbox_node set, committed BEFORE the POST; lease_until is
               the time by which the node must have vouched for the run (the sweeper renews it);
               callback_secret_hash is the digest of the secret in this hand-off's body (scheduler/callback_auth.py)
  running      state 'running' (the running callback; also a run an upstream starter reports itself)
  finished     state 'finished', with success, return code, output and outcome

TRANSITIONS names every legal change, the stages it leaves from and the SQL predicate ("guard") its UPDATE
carries, so a write from a stage the table does not allow changes nothing: a dispatcher that lost its lease,
a late callback or a second sweeper finds the row moved on and does nothing. Each transition is one function
here and one transaction, run by `Store.write`, which re-runs it whole after a deadlock or a Galera
certification conflict (scheduler/galera.py): the one place such retries happen. No other module writes
script_log (tests/unit/test_lifecycle.py checks it); the named reads are scheduler/queries.py's.

Counting follows upstream: the monthly count (the quota) and the statistics tables grow only by runs whose
sandbox reported a result. Runs the scheduler ends itself (rate limit, task-file failure, refusal, "sandbox
lost", queue time-out) are finished without being counted, and so is a run the sandbox reports as lost after
its own restart: upstream's starter sends nothing for such a run, even when it had started.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from observability import logs
from scheduler import counters, outcomes, stats
from scheduler.db import Store, in_list

log = logging.getLogger(__name__)

# Upstream's values of the state column.
PENDING = "pending"
RUNNING = "running"
FINISHED = "finished"


class Stage(enum.Enum):
    PENDING = "pending"
    CLAIMED = "claimed"
    HANDING_OFF = "handing off"
    RUNNING = "running"
    FINISHED = "finished"


# --- predicates over the columns: which rows are in which stage --------------------------------------------

NOT_FINISHED = "(state IS NULL OR state <> 'finished')"  # rows other tools wrote may have no state
ENDED = "(state IS NULL OR state = 'finished')"  # what retention may delete
# Runs a dispatcher may take: queued, not handed off, and no live claim (or delay) on them.
CLAIMABLE = "state = 'pending' AND dispatched_at IS NULL AND (lease_until IS NULL OR lease_until < $now)"
QUEUED = "state = 'pending' AND dispatched_at IS NULL"  # pending or claimed: waiting for a sandbox
HANDED_OFF = "state IN ('pending', 'running') AND dispatched_at IS NOT NULL"  # a node holds (or may hold) it
RUNNING_ELSEWHERE = "state = 'running' AND dispatched_at IS NULL"  # reported running by a starter we never used


def stage_of(state: str | None, claimed_by: str | None, lease_until: datetime | None,
             dispatched_at: datetime | None, now: datetime) -> Stage:
    """The stage a row's columns put it in. A row without a state (adopted from before upstream 6.2.0; it may
    have run) counts as pending for the callbacks, as NOT_FINISHED has it, but no claim takes it: CLAIMABLE
    wants state 'pending'."""
    if state == FINISHED:
        return Stage.FINISHED
    if state == RUNNING:
        return Stage.RUNNING
    if dispatched_at is not None:
        return Stage.HANDING_OFF
    if claimed_by is not None and lease_until is not None and lease_until >= now:
        return Stage.CLAIMED
    return Stage.PENDING


@dataclass(frozen=True)
class Transition:
    name: str
    sources: frozenset[Stage]
    target: Stage | None  # None: the run stays in its stage
    guard: str  # the UPDATE's predicate: admits no row outside `sources` (and only the caller's, where it
    # names $me or $node)

    def allows(self, stage: Stage) -> bool:
        return stage in self.sources


_ALIVE = frozenset({Stage.PENDING, Stage.CLAIMED, Stage.HANDING_OFF, Stage.RUNNING})

CLAIM = Transition("claim", frozenset({Stage.PENDING}), Stage.CLAIMED, CLAIMABLE)
# Back to the queue, by the claimer ($me), while no POST can have been sent; also its own claim whose lease
# ran out and nobody took (pending stays pending).
RELEASE = Transition("release", frozenset({Stage.CLAIMED, Stage.PENDING}), Stage.PENDING,
                     "claimed_by = $me AND dispatched_at IS NULL AND state = 'pending'")
HAND_OFF = Transition("hand off", frozenset({Stage.CLAIMED}), Stage.HANDING_OFF,
                      "claimed_by = $me AND state = 'pending' AND dispatched_at IS NULL AND lease_until >= $now")
# Undo the hand-off mark for a run the node ($node) provably never accepted, and that never reported running.
REQUEUE = Transition("requeue", frozenset({Stage.HANDING_OFF}), Stage.PENDING,
                     "sandbox_node = $node AND state = 'pending' AND started_at IS NULL")
# The node vouched for the run: a new deadline, same stage.
RENEW = Transition("renew", frozenset({Stage.HANDING_OFF, Stage.RUNNING}), None,
                   "dispatched_at IS NOT NULL AND state <> 'finished'")
# Callbacks are accepted for any run not yet finished (DESIGN.md, property 7): also a run never handed off here.
START = Transition("start", _ALIVE, Stage.RUNNING, NOT_FINISHED)
FINISH = Transition("finish", _ALIVE, Stage.FINISHED, NOT_FINISHED)
TRANSITIONS = (CLAIM, RELEASE, HAND_OFF, REQUEUE, RENEW, START, FINISH)


# --- what the transitions take and answer -------------------------------------------------------------------


class Outcome(enum.Enum):
    APPLIED = "applied"
    NOT_FOUND = "not found"
    ALREADY_FINISHED = "already finished"


@dataclass(frozen=True)
class NewRun:
    dtable_uuid: str
    script_name: str
    owner: str
    org_id: int | None
    context_data: Any
    operate_from: str | None
    script_content: str | None = None
    draft_api_token: str | None = None


@dataclass(frozen=True)
class RunResult:
    success: bool
    return_code: int | None
    output: str | None
    started_at: datetime | None = None
    spend_time: float | None = None
    counted: bool = True  # False: finished without a result of its own, so not in the quota or statistics
    outcome: str | None = None  # scheduler.outcomes; None: success or failed by `success`

    @property
    def kind(self) -> str:
        return self.outcome or (outcomes.SUCCESS if self.success else outcomes.FAILED)


# What a callback must pass before it changes its run (its run's secret, its next legal transition, times that
# can be true): given the locked row before the change and what the callback reports, it answers what to store
# (an unbelievable time taken out) or raises to refuse the change.
AdmitStart = Callable[[Any, datetime], datetime]
AdmitResult = Callable[[Any, "RunResult"], "RunResult"]


def _lock(store: Store) -> str:
    return " FOR UPDATE" if store.mysql else ""  # SQLite: the write transaction already holds BEGIN IMMEDIATE


def _skip_locked(store: Store) -> str:
    return " FOR UPDATE SKIP LOCKED" if store.mysql else ""


def as_datetime(value: datetime | str | None) -> datetime | None:
    """A timestamp as read back (SQLite gives text)."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


# --- the transitions --------------------------------------------------------------------------------------


def create(store: Store, run: NewRun) -> int:
    """Write a pending run and return its id; nothing is dispatched here."""
    context = json.dumps(run.context_data) if run.context_data else None
    values = {
        "dtable_uuid": run.dtable_uuid,
        "owner": run.owner,
        "org_id": run.org_id,
        "script_name": run.script_name,
        "context_data": context,
        "operate_from": run.operate_from,
        "state": PENDING,
        "created_at": store.clock.now(),
        "attempt": 0,
    }
    if run.script_content is not None:
        values["script_content"] = run.script_content
        values["draft_api_token"] = run.draft_api_token

    def tx() -> int:
        run_id = store.insert("script_log", "id", **values)
        counters.bump(store, counters.CREATED, key=run_id)
        return run_id

    run_id = store.write(tx)
    logs.for_run(log, run_id, run.script_name, run.dtable_uuid).info("queued (%s)", run.operate_from)
    return run_id


# A team's slice of a claim: (SQL selecting the team's runs, its parameters, how many to take).
Pick = tuple[str, dict[str, Any], int]
CLAIMED_COLUMNS = ("id, dtable_uuid, script_name, owner, org_id, context_data, "
                   "script_content IS NOT NULL, attempt")


def claim(store: Store, me: str, lease_secs: int, choose: Callable[[datetime], list[Pick]]) -> list[Any]:
    """pending -> claimed for the runs `choose(now)` picks, in one transaction: each team's oldest claimable
    runs, locked (SKIP LOCKED on MariaDB, so dispatchers do not wait for each other), then marked ours with
    attempt + 1. Answers the claimed rows (CLAIMED_COLUMNS) in the order chosen."""

    def tx() -> list[Any]:
        now = store.clock.now()
        ids: list[int] = []
        for condition, params, count in choose(now):
            rows = store.select(
                f"SELECT id FROM script_log WHERE {CLAIM.guard} AND {condition} ORDER BY id LIMIT $n"
                f"{_skip_locked(store)}",
                {"now": now, "n": count, **params},
            )
            ids.extend(int(r) for r in rows)
        if not ids:
            return []
        placeholders, params = in_list("c", ids)
        store.execute(
            "UPDATE script_log SET claimed_by = $me, lease_until = $lease, attempt = COALESCE(attempt, 0) + 1 "
            f"WHERE id IN ({placeholders})",  # locked just now by the guard's SELECT, in this transaction
            {"me": me, "lease": now + timedelta(seconds=lease_secs), **params},
        )
        counters.bump(store, counters.CLAIMED, n=len(ids))
        rows = store.select(f"SELECT {CLAIMED_COLUMNS} FROM script_log WHERE id IN ({placeholders})", params)
        by_id = {int(r[0]): r for r in rows}
        return [by_id[run_id] for run_id in ids]

    return store.write(tx)


def claim_overdue(store: Store, me: str, lease_secs: int, created_before: datetime, limit: int) -> list[int]:
    """pending -> claimed (by the maintenance sweep) for runs queued since before `created_before`, so no
    dispatcher hands them out while the sweep ends them. No attempt is counted: they will not run."""

    def tx() -> list[int]:
        now = store.clock.now()
        ids = [
            int(r)
            for r in store.select(
                f"SELECT id FROM script_log WHERE {CLAIM.guard} AND created_at < $cutoff "
                f"ORDER BY id LIMIT $limit{_skip_locked(store)}",
                {"now": now, "cutoff": created_before, "limit": limit},
            )
        ]
        for run_id in ids:
            store.execute(
                "UPDATE script_log SET claimed_by = $me, lease_until = $lease WHERE id = $run_id",
                {"me": me, "lease": now + timedelta(seconds=lease_secs), "run_id": run_id},
            )
        return ids

    return store.write(tx)


def hand_off(
    store: Store, me: str, assignments: dict[int, str], deadline: datetime, digests: dict[int, str] | None = None
) -> set[int]:
    """claimed -> handing off: record node, time and the digest of the run's callback secret for each run BEFORE
    posting it; answers the runs still ours.

    From here on the run may reach a sandbox, so only the sweeper (which asks the node) may requeue it.
    """
    digests = digests or {}

    def tx() -> set[int]:
        now = store.clock.now()
        ours: set[int] = set()
        by_node: dict[str, list[int]] = {}
        for run_id, node in assignments.items():
            by_node.setdefault(node, []).append(run_id)
        for node, ids in by_node.items():
            placeholders, params = in_list("h", ids)
            # One statement per node: each run's digest picked by id (its bind name is the id's, "h<i>").
            cases = " ".join(f"WHEN ${name} THEN $k{i}" for i, name in enumerate(params))
            keyed = {f"k{i}": digests.get(run_id) for i, run_id in enumerate(params.values())}
            store.execute(
                "UPDATE script_log SET dispatched_at = $now, sandbox_node = $node, lease_until = $deadline, "
                f"callback_secret_hash = CASE id {cases} END WHERE id IN ({placeholders}) AND {HAND_OFF.guard}",
                {"now": now, "node": node, "deadline": deadline, "me": me, **params, **keyed},
            )
            rows = store.select(
                f"SELECT id FROM script_log WHERE id IN ({placeholders}) AND claimed_by = $me "
                "AND sandbox_node = $node AND dispatched_at IS NOT NULL AND state = 'pending'",
                {"node": node, "me": me, **params},
            )
            ours.update(int(r) for r in rows)
        return ours

    return store.write(tx)


def release(store: Store, me: str, ids: list[int], delay: float = 0.0) -> int:
    """claimed -> pending for runs never marked as handing off (claimable again after `delay` seconds)."""
    if not ids:
        return 0
    placeholders, params = in_list("r", ids)

    def tx() -> int:
        until = store.clock.now() + timedelta(seconds=delay) if delay else None
        return store.execute(
            f"UPDATE script_log SET claimed_by = NULL, lease_until = $until WHERE id IN ({placeholders}) "
            f"AND {RELEASE.guard}",
            {"me": me, "until": until, **params},
        )

    return store.write(tx)


def requeue(store: Store, ids: list[int], node: str) -> int:
    """handing off -> pending for runs whose POST provably never reached `node` (429, refused connection, the
    node's own "never accepted")."""
    if not ids:
        return 0
    placeholders, params = in_list("u", ids)

    def tx() -> int:
        return store.execute(
            "UPDATE script_log SET claimed_by = NULL, lease_until = NULL, dispatched_at = NULL, sandbox_node = NULL, "
            f"callback_secret_hash = NULL WHERE id IN ({placeholders}) AND {REQUEUE.guard}",
            {"node": node, **params},
        )

    return store.write(tx)


def renew(store: Store, ids: list[int], deadline: datetime) -> int:
    """The node vouched for these runs: their deadline moves to `deadline` (500 runs per transaction)."""
    renewed = 0
    for start in range(0, len(ids), 500):
        placeholders, params = in_list("n", ids[start : start + 500])

        def tx(placeholders: str = placeholders, params: dict[str, Any] = params) -> int:
            return store.execute(
                f"UPDATE script_log SET lease_until = $deadline WHERE id IN ({placeholders}) AND {RENEW.guard}",
                {"deadline": deadline, **params},
            )

        renewed += store.write(tx)
    return renewed


def erase_drafts(store: Store, ids: list[int]) -> None:
    """A sandbox holds the draft now: the token and code need not stay in the database (no change of stage)."""
    if not ids:
        return
    placeholders, params = in_list("d", ids)
    store.write(lambda: store.execute(
        f"UPDATE script_log SET draft_api_token = NULL, script_content = NULL WHERE id IN ({placeholders})", params))
    store.scrub()


def start(
    store: Store,
    run_id: int,
    started_at: datetime | None = None,
    waited: Callable[[float], None] | None = None,
    admit: AdmitStart | None = None,
) -> Outcome:
    """-> running: the sandbox started the run. Ignored once the run is finished (a late callback).

    The first start of a run is counted and logged, and `waited` hears how long it was queued. `admit` sees
    the locked row (state, created_at, dispatched_at ...) and the start first: it answers the start to store,
    or refuses the change by raising.
    """
    reported = started_at or store.clock.now()
    first: list[tuple[float, Any]] = []  # (seconds queued, the row) when this call started the run

    def tx() -> Outcome:
        first.clear()
        started = reported
        before = store.select(  # locked: of two callbacks for one run, one counts it
            "SELECT state, created_at, script_name, dtable_uuid, sandbox_node, dispatched_at, callback_secret_hash "
            f"FROM script_log WHERE id = $run_id{_lock(store)}",
            {"run_id": run_id},
        )
        if before and admit is not None:
            started = admit(before[0], started)
        changed = store.execute(
            "UPDATE script_log SET started_at = $started, state = $running, draft_api_token = NULL "
            f"WHERE id = $run_id AND {START.guard}",
            {"started": started, "running": RUNNING, "run_id": run_id},
        )
        if not changed:
            return Outcome.ALREADY_FINISHED if before else Outcome.NOT_FOUND
        row = before[0]
        if row.state in (None, PENDING):
            first.append((_count_start(store, run_id, row.created_at, started), row))
        return Outcome.APPLIED

    outcome = store.write(tx)
    if first:
        queued, row = first[0]
        _tell_start(logs.for_run(log, run_id, row.script_name, row.dtable_uuid, row.sandbox_node), queued, waited)
    return outcome


def _count_start(store: Store, run_id: int, created_at: Any, started: datetime) -> float:
    """Count a run's first start (within its transaction); how long it was queued, in seconds."""
    counters.bump(store, counters.STARTED, key=run_id)
    created = as_datetime(created_at)
    return max(0.0, (started - created).total_seconds()) if created else 0.0


def _tell_start(run_log: Any, queued: float, waited: Callable[[float], None] | None) -> None:
    """After the commit: the run's start in its log, and its queue wait to `waited`."""
    run_log.info("running after %.1f s in the queue", queued)
    if waited is not None:
        waited(queued)


def finish(store: Store, run_id: int, reported: RunResult, admit: AdmitResult | None = None,
           waited: Callable[[float], None] | None = None) -> Outcome:
    """-> finished, and (when the result is counted) counted in the statistics, in one transaction, at most once.

    `admit` sees the locked row and the result first: it answers the result to store, or refuses the change by
    raising. A run that reports its result without a running callback first (a short one) is counted as started
    here, and `waited` hears how long it was queued.
    """

    def tx() -> Outcome:
        ended.clear()
        queued.clear()
        result = reported
        rows = store.select(
            "SELECT state, started_at, dtable_uuid, owner, org_id, script_name, sandbox_node, created_at, "
            f"dispatched_at, claimed_by, lease_until, callback_secret_hash FROM script_log "
            f"WHERE id = $run_id{_lock(store)}",
            {"run_id": run_id},
        )
        if not rows:
            return Outcome.NOT_FOUND
        row = rows[0]
        if admit is not None:
            result = admit(row, result)
        now = store.clock.now()
        stage = stage_of(row.state, row.claimed_by, as_datetime(row.lease_until), as_datetime(row.dispatched_at), now)
        if not FINISH.allows(stage):
            return Outcome.ALREADY_FINISHED
        spend = result.spend_time
        started = result.started_at or as_datetime(row.started_at)
        if started is None:
            started = now - timedelta(seconds=spend or 0)
        finished = started + timedelta(seconds=spend) if spend is not None else now
        changed = store.execute(
            "UPDATE script_log SET state = $finished_state, started_at = $started, finished_at = $finished, "
            "success = $success, return_code = $return_code, output = $output, "
            "draft_api_token = NULL, script_content = NULL, outcome = $outcome "
            f"WHERE id = $run_id AND {FINISH.guard}",
            {
                "finished_state": FINISHED,
                "started": started,
                "finished": finished,
                "success": bool(result.success),
                "return_code": result.return_code,
                "output": result.output,
                "outcome": result.kind,
                "run_id": run_id,
            },
        )
        if not changed:
            return Outcome.ALREADY_FINISHED
        counters.bump(store, counters.FINISHED, result.kind, key=run_id)
        if result.counted and row.state in (None, PENDING):  # a result without a running callback: it ran
            queued.append(_count_start(store, run_id, row.created_at, started))
        if result.counted:
            stats.count_run(store, row.dtable_uuid, row.owner, row.org_id, spend or 0.0, now)
        ended.append((row, result))
        return Outcome.APPLIED

    ended: list[tuple[Any, RunResult]] = []
    queued: list[float] = []
    outcome = store.write(tx)
    if ended:
        row, result = ended[-1]
        run_log = logs.for_run(log, run_id, row.script_name, row.dtable_uuid, row.sandbox_node)
        if queued:  # started and ended before its running callback was due: one line for each, as for others
            _tell_start(run_log, queued[-1], waited)
        run_log.info("finished: %s (return code %s)", result.kind, result.return_code)
    return outcome


def fail(
    store: Store, run_id: int, output: str, return_code: int | None = None, outcome: str = outcomes.FAILED
) -> Outcome:
    """-> finished as failed, with a text the user reads and its kind (rate limit, sandbox lost, fetch failure...).

    The scheduler ends the run, not a sandbox's result: it is not counted (upstream's rule).
    """
    result = RunResult(success=False, return_code=return_code, output=output, counted=False, outcome=outcome)
    return finish(store, run_id, result)
