"""The life of a run: created pending, marked running, finished once with its result.

Plain functions over a `Store`, callable without HTTP, so the dispatcher and maintenance loops change
state exactly the way the callbacks do. State changes are single conditional UPDATEs, which makes them
idempotent and race-free: a result for a finished run changes nothing and counts nothing.

Counting follows upstream: the monthly count (the quota) and the statistics tables grow only by runs whose
sandbox reported a result. Runs the scheduler ends itself (rate limit, task-file failure, refusal, "sandbox
lost", queue time-out) are finished in script_log without being counted, and so is a run the sandbox reports
as lost after its own restart: upstream's starter sends nothing for such a run, even when it had started.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from pony.orm import db_session, desc, select

from observability import logs
from scheduler import counters, outcomes, stats, texts
from scheduler.callback_auth import Credential, duration_problem, start_problem
from scheduler.db import Store
from scheduler.models import FINISHED, PENDING, RUNNING

NOT_FINISHED = "(state IS NULL OR state <> 'finished')"
log = logging.getLogger(__name__)

SUMMARY_FIELDS = (
    "id",
    "dtable_uuid",
    "owner",
    "org_id",
    "script_name",
    "started_at",
    "finished_at",
    "success",
    "return_code",
    "operate_from",
    "state",
    "created_at",
)


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


def create_run(store: Store, run: NewRun) -> int:
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
        run_id = int(store.db.insert("script_log", returning="id", **values))
        counters.bump(store, counters.CREATED, key=run_id)
        return run_id

    run_id = store.write(tx)
    logs.for_run(log, run_id, run.script_name, run.dtable_uuid).info("queued (%s)", run.operate_from)
    return run_id


def to_json(store: Store, row: Any, full: bool = True) -> dict[str, Any]:
    """Upstream's ScriptLog JSON: started_at "" while unset, finished_at/created_at null."""
    iso = store.clock.iso
    data: dict[str, Any] = {
        "id": row.id,
        "dtable_uuid": row.dtable_uuid,
        "owner": row.owner,
        "org_id": row.org_id,
        "script_name": row.script_name,
        "started_at": iso(row.started_at) or "",
        "finished_at": iso(row.finished_at),
        "success": None if row.success is None else bool(row.success),
        "return_code": row.return_code,
        "operate_from": row.operate_from,
        "state": row.state,
        "created_at": iso(row.created_at),
    }
    if full:
        data["context_data"] = _parse_context(row.context_data)
        data["output"] = row.output
    return data


def _parse_context(raw: str | None) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:  # rows written by other tools; show what is there rather than fail
        return raw


def get_run(store: Store, run_id: int) -> dict[str, Any] | None:
    """One run by id: the hot path dtable-web polls, so one query over exactly the columns shown."""
    with db_session:
        rows = store.db.select(
            f"SELECT {', '.join(SUMMARY_FIELDS)}, context_data, output FROM script_log WHERE id = $run_id",
            {"run_id": run_id},
        )
        return to_json(store, rows[0]) if rows else None


def list_logs(
    store: Store, uuids: tuple[str, ...], script_name: str, descending: bool, offset: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """One script's runs in a base, newest first unless asked otherwise."""
    log_entity = store.entities.ScriptLog
    with db_session:
        query = select(s for s in log_entity if s.dtable_uuid in uuids and s.script_name == script_name)
        count = query.count()
        ordered = query.order_by(desc(log_entity.id) if descending else log_entity.id)
        rows = ordered.limit(limit, offset=offset)
        return [to_json(store, row) for row in rows], count


@dataclass(frozen=True)
class RunFilter:
    org_id: int | None = None
    base_uuids: tuple[str, ...] = ()
    start: datetime | None = None
    end: datetime | None = None
    end_inclusive: bool = True


def list_runs(store: Store, where: RunFilter, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Runs for /admin/runs/, newest first, without context_data and output (they can be megabytes)."""
    clauses: list[str] = ["1 = 1"]
    params: dict[str, Any] = {}
    if where.org_id is not None:
        clauses.append("org_id = $org_id")
        params["org_id"] = where.org_id
    if where.base_uuids:
        names = [f"u{i}" for i in range(len(where.base_uuids))]
        clauses.append(f"dtable_uuid IN ({', '.join('$' + n for n in names)})")
        params.update(zip(names, where.base_uuids, strict=True))
    if where.start is not None:
        clauses.append("started_at >= $start")
        params["start"] = where.start
    if where.end is not None:
        clauses.append("started_at <= $end" if where.end_inclusive else "started_at < $end")
        params["end"] = where.end
    condition = " AND ".join(clauses)
    params.update(limit=limit, offset=offset)
    with db_session:
        total = store.db.select(f"SELECT COUNT(*) FROM script_log WHERE {condition}", params)[0]
        rows = store.db.select(
            f"SELECT {', '.join(SUMMARY_FIELDS)} FROM script_log WHERE {condition} "
            "ORDER BY id DESC LIMIT $limit OFFSET $offset",
            params,
        )
        return [to_json(store, row, full=False) for row in rows], int(total)


def mark_running(
    store: Store,
    run_id: int,
    started_at: datetime | None = None,
    waited: Callable[[float], None] | None = None,
    credential: Credential | None = None,
) -> Outcome:
    """The sandbox started the run. Ignored once the run is finished (a late callback).

    The first start of a run is counted and logged, and `waited` hears how long it was queued.
    With a `credential` (a callback): refused (callback_auth.Refused) unless it is the run's own secret and the
    run was handed off and not yet running; a start the scheduler cannot believe is replaced by the arrival time.
    """
    first: list[tuple[float, Any]] = []  # (seconds queued, the row) when this call started the run

    def tx() -> Outcome:
        first.clear()
        # Locked: two callbacks for one run, one of them counts it (SQLite: Pony holds BEGIN IMMEDIATE).
        before = store.db.select(
            "SELECT state, created_at, script_name, dtable_uuid, sandbox_node, dispatched_at, callback_secret_hash "
            f"FROM script_log WHERE id = $run_id{_lock(store)}",
            {"run_id": run_id},
        )
        started = started_at or store.clock.now()
        if credential is not None and before:
            credential.running_allowed(before[0])  # raises Refused
            now = store.clock.now()
            if start_problem(started_at, _as_datetime(before[0].created_at), now) is not None:
                started = now
        cursor = store.db.execute(
            "UPDATE script_log SET started_at = $started, state = $running, draft_api_token = NULL "
            f"WHERE id = $run_id AND {NOT_FINISHED}",
            {"started": started, "running": RUNNING, "run_id": run_id},
        )
        if not cursor.rowcount:
            return Outcome.ALREADY_FINISHED if before else Outcome.NOT_FOUND
        row = before[0]
        if row.state in (None, PENDING):
            counters.bump(store, counters.STARTED, key=run_id)
            created_at = _as_datetime(row.created_at)
            first.append((max(0.0, (started - created_at).total_seconds()) if created_at else 0.0, row))
        return Outcome.APPLIED

    outcome = store.write(tx)
    if first:
        queued, row = first[0]
        run_log = logs.for_run(log, run_id, row.script_name, row.dtable_uuid, row.sandbox_node)
        run_log.info("running after %.1f s in the queue", queued)
        if waited is not None:
            waited(queued)
    return outcome


def _lock(store: Store) -> str:
    return " FOR UPDATE" if store.mysql else ""  # SQLite: Pony already holds BEGIN IMMEDIATE


def _believable(result: RunResult, row: Any, now: datetime) -> RunResult:
    """The result with the times the scheduler cannot believe taken out, as malformed fields are."""
    started = result.started_at or _as_datetime(row.started_at)
    problems = [start_problem(result.started_at, _as_datetime(row.created_at), now)]
    if problems[0] is not None:
        started = _as_datetime(row.started_at)
    # Without any start, the run cannot have taken longer than it has existed.
    problems.append(duration_problem(result.spend_time, started or _as_datetime(row.created_at), now))
    wrong = [p for p in problems if p is not None]
    if not wrong:
        return result
    notice = texts.RESULT_MALFORMED.format(problems="; ".join(wrong))
    return replace(
        result,
        success=False,
        output=f"{result.output}\n{notice}" if result.output else notice,
        started_at=None if problems[0] is not None else result.started_at,
        spend_time=None if problems[1] is not None else result.spend_time,
        outcome=None if result.outcome == outcomes.SUCCESS else result.outcome,  # not believed: failed
    )


def record_result(store: Store, run_id: int, result: RunResult, credential: Credential | None = None) -> Outcome:
    """Finish the run and (when `result.counted`) count it in the statistics, in one transaction, at most once.

    With a `credential` (a callback): refused (callback_auth.Refused) unless it is the run's own secret and the
    run was handed off and not finished; reported times the scheduler cannot believe are not stored.
    """

    def tx() -> Outcome:
        ended.clear()
        rows = store.db.select(
            "SELECT state, started_at, dtable_uuid, owner, org_id, script_name, sandbox_node, dispatched_at, "
            f"callback_secret_hash, created_at FROM script_log WHERE id = $run_id{_lock(store)}",
            {"run_id": run_id},
        )
        if not rows:
            return Outcome.NOT_FOUND
        row = rows[0]
        if credential is not None:
            credential.result_allowed(row)  # raises Refused
        if row.state == FINISHED:
            return Outcome.ALREADY_FINISHED
        now = store.clock.now()
        # A new name, not `result`: Store.write may run this again (Galera certification, deadlocks).
        believed = _believable(result, row, now) if credential is not None else result
        spend = believed.spend_time
        started = believed.started_at or _as_datetime(row.started_at)
        if started is None:
            started = now - timedelta(seconds=spend or 0)
        finished = started + timedelta(seconds=spend) if spend is not None else now
        cursor = store.db.execute(
            "UPDATE script_log SET state = $finished_state, started_at = $started, finished_at = $finished, "
            "success = $success, return_code = $return_code, output = $output, "
            "draft_api_token = NULL, script_content = NULL, outcome = $outcome "
            f"WHERE id = $run_id AND {NOT_FINISHED}",
            {
                "finished_state": FINISHED,
                "started": started,
                "finished": finished,
                "success": bool(believed.success),
                "return_code": believed.return_code,
                "output": believed.output,
                "outcome": believed.kind,
                "run_id": run_id,
            },
        )
        if not cursor.rowcount:
            return Outcome.ALREADY_FINISHED
        counters.bump(store, counters.FINISHED, believed.kind, key=run_id)
        if believed.counted and row.state in (None, PENDING):
            counters.bump(store, counters.STARTED, key=run_id)  # a result without a running callback: it ran
        if believed.counted:
            stats.count_run(store, row.dtable_uuid, row.owner, row.org_id, spend or 0.0, now)
        ended.append((row, believed.kind))
        return Outcome.APPLIED

    ended: list[tuple[Any, str]] = []
    outcome = store.write(tx)
    if ended:
        row, kind = ended[-1]
        run_log = logs.for_run(log, run_id, row.script_name, row.dtable_uuid, row.sandbox_node)
        run_log.info("finished: %s (return code %s)", kind, result.return_code)
    return outcome


def fail_run(
    store: Store, run_id: int, output: str, return_code: int | None = None, outcome: str = outcomes.FAILED
) -> Outcome:
    """End a run as failed with a text the user reads and its kind (rate limit, sandbox lost, fetch failure...).

    The scheduler ends the run, not a sandbox's result: it is not counted (upstream's rule).
    """
    result = RunResult(success=False, return_code=return_code, output=output, counted=False, outcome=outcome)
    return record_result(store, run_id, result)


def _as_datetime(value: datetime | str | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)
