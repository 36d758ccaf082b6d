"""The named reads of script_log that the API, the dispatcher, the sweeps, the metrics and the status page use.

Each is one function over a `Store` that opens its own read session unless it says it runs inside the
caller's transaction (the claim's fair-share reads). The stage predicates they filter on are the state
machine's (scheduler/lifecycle.py); writes are lifecycle's alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from scheduler import outcomes
from scheduler.db import Store, in_list
from scheduler.lifecycle import CLAIMABLE, HANDED_OFF, QUEUED, RUNNING_ELSEWHERE

# What a run's summary shows (upstream's ScriptLog JSON without context_data and output).
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
SUMMARY = ", ".join(SUMMARY_FIELDS)
FULL = f"{SUMMARY}, context_data, output"


# --- the API ------------------------------------------------------------------------------------------------


def run_by_id(store: Store, run_id: int) -> Any | None:
    """One run with context and output (FULL): the hot path dtable-web polls, one query."""
    with store.reading():
        rows = store.select(f"SELECT {FULL} FROM script_log WHERE id = $run_id", {"run_id": run_id})
    return rows[0] if rows else None


def script_runs(
    store: Store, uuids: tuple[str, ...], script_name: str, descending: bool, offset: int, limit: int
) -> tuple[list[Any], int]:
    """One script's runs in a base (any of the uuid's spellings), by id, with the number of all of them."""
    if not uuids:
        return [], 0
    placeholders, params = in_list("u", list(uuids))
    condition = f"dtable_uuid IN ({placeholders}) AND script_name = $script_name"
    params.update(script_name=script_name, limit=limit, offset=offset)
    with store.reading():
        total = store.select(f"SELECT COUNT(*) FROM script_log WHERE {condition}", params)[0]
        rows = store.select(
            f"SELECT {FULL} FROM script_log WHERE {condition} ORDER BY id {'DESC' if descending else 'ASC'} "
            "LIMIT $limit OFFSET $offset",
            params,
        )
    return rows, int(total)


@dataclass(frozen=True)
class RunFilter:
    org_id: int | None = None
    base_uuids: tuple[str, ...] = ()
    start: datetime | None = None
    end: datetime | None = None
    end_inclusive: bool = True


def _filtered(where: RunFilter, *extra: str) -> tuple[list[str], dict[str, Any]]:
    """WHERE clauses and their parameters for a RunFilter (a run's start decides its time)."""
    clauses: list[str] = ["1 = 1", *extra]
    params: dict[str, Any] = {}
    if where.org_id is not None:
        clauses.append("org_id = $org_id")
        params["org_id"] = where.org_id
    if where.base_uuids:
        placeholders, names = in_list("u", list(where.base_uuids))
        clauses.append(f"dtable_uuid IN ({placeholders})")
        params.update(names)
    if where.start is not None:
        clauses.append("started_at >= $start")
        params["start"] = where.start
    if where.end is not None:
        clauses.append("started_at <= $end" if where.end_inclusive else "started_at < $end")
        params["end"] = where.end
    return clauses, params


def admin_runs(store: Store, where: RunFilter, offset: int, limit: int) -> tuple[list[Any], int]:
    """Run summaries for /admin/runs/, newest first, and how many match."""
    clauses, params = _filtered(where)
    condition = " AND ".join(clauses)
    params.update(limit=limit, offset=offset)
    with store.reading():
        total = store.select(f"SELECT COUNT(*) FROM script_log WHERE {condition}", params)[0]
        rows = store.select(
            f"SELECT {SUMMARY} FROM script_log WHERE {condition} ORDER BY id DESC LIMIT $limit OFFSET $offset",
            params,
        )
    return rows, int(total)


# --- the dispatcher -----------------------------------------------------------------------------------------


def draft_payload(store: Store, run_id: int) -> tuple[str, str] | None:
    """script_content and draft_api_token of a draft run (None once erased)."""
    with store.reading():
        rows = store.select(
            "SELECT script_content, draft_api_token FROM script_log WHERE id = $run_id", {"run_id": run_id}
        )
    if not rows or rows[0][0] is None:
        return None
    return str(rows[0][0]), str(rows[0][1] or "")


def claimable_by_team(store: Store, now: datetime) -> list[Any]:
    """(org_id, owner, oldest id, count) of claimable runs; inside the claim's transaction."""
    return store.select(
        f"SELECT org_id, owner, MIN(id), COUNT(*) FROM script_log WHERE {CLAIMABLE} GROUP BY org_id, owner",
        {"now": now},
    )


def window_usage(store: Store, now: datetime, since: datetime) -> list[Any]:
    """(org_id, owner, runs, seconds of finished runs, seconds so far of runs in flight) of the runs handed
    out since `since`; inside the claim's transaction."""
    finished = store.seconds_between("started_at", "finished_at")
    in_flight = store.seconds_between("COALESCE(started_at, dispatched_at)", "$now")
    done = "state = 'finished' AND started_at IS NOT NULL AND finished_at IS NOT NULL"
    return store.select(
        f"SELECT org_id, owner, COUNT(*), "
        f"SUM(CASE WHEN {done} THEN {finished} ELSE 0 END), "
        f"SUM(CASE WHEN state <> 'finished' THEN {in_flight} ELSE 0 END) "
        "FROM script_log WHERE dispatched_at >= $since GROUP BY org_id, owner",
        {"since": since, "now": now},
    )


# --- the sweeps ---------------------------------------------------------------------------------------------


def handed_off(store: Store, before: datetime, limit: int) -> list[Any]:
    """(id, sandbox_node, dispatched_at, started_at, lease_until) of runs handed off before `before` and not
    finished, oldest first: what the hand-off sweep asks the nodes about."""
    with store.reading():
        return store.select(
            "SELECT id, sandbox_node, dispatched_at, started_at, lease_until FROM script_log "
            f"WHERE {HANDED_OFF} AND dispatched_at < $fresh ORDER BY id LIMIT $limit",
            {"fresh": before, "limit": limit},
        )


def running_elsewhere(store: Store, started_before: datetime, limit: int) -> list[int]:
    """Ids of runs a starter we never handed them to reported running, before `started_before`."""
    with store.reading():
        rows = store.select(
            f"SELECT id FROM script_log WHERE {RUNNING_ELSEWHERE} AND started_at < $cutoff LIMIT $limit",
            {"cutoff": started_before, "limit": limit},
        )
    return [int(r) for r in rows]


# --- the metrics and the status page -----------------------------------------------------------------------


def queued_by_team(store: Store) -> list[Any]:
    """(org_id, owner, count, oldest created_at) of the runs waiting for a sandbox (within a read session)."""
    return store.select(
        f"SELECT org_id, owner, COUNT(*), MIN(created_at) FROM script_log WHERE {QUEUED} GROUP BY org_id, owner"
    )


def in_flight_by_node(store: Store) -> dict[str, int]:
    """Runs handed to each node and not finished (within a read session)."""
    rows = store.select(f"SELECT sandbox_node, COUNT(*) FROM script_log WHERE {HANDED_OFF} GROUP BY sandbox_node")
    return {str(node or ""): int(count) for node, count in rows}


def running_count(store: Store) -> int:
    """Runs in the running stage (within a read session)."""
    return int(store.select("SELECT COUNT(*) FROM script_log WHERE state = 'running'")[0])


# --- the status page's charts (within a read session; every window filters on the indexed started_at) -------

# What ended a finished run, as stored, or by its `success` for rows from before the outcome column.
KIND = f"COALESCE(outcome, CASE WHEN success THEN '{outcomes.SUCCESS}' ELSE '{outcomes.FAILED}' END)"
# Kinds that say nothing about how long a script runs: it never ran.
NEVER_RAN = (outcomes.RATE_LIMITED, outcomes.NOT_STARTED, outcomes.FETCH_FAILED)
_NEVER_RAN = ", ".join(f"'{kind}'" for kind in NEVER_RAN)


def _bucket(store: Store, column: str) -> str:
    """The column's minute ("YYYY-MM-DD HH:MM") or hour ("YYYY-MM-DD HH") as text, the same on both backends.

    The format is the parameter $fmt (a literal % would clash with the MySQL driver's placeholders).
    """
    return f"DATE_FORMAT({column}, $fmt)" if store.mysql else f"strftime($fmt, {column})"


def _format(store: Store, per: str) -> str:
    if store.mysql:
        return "%Y-%m-%d %H:%i" if per == "minute" else "%Y-%m-%d %H"
    return "%Y-%m-%d %H:%M" if per == "minute" else "%Y-%m-%d %H"


def finished_per_bucket(store: Store, per: str, first: datetime) -> list[Any]:
    """(minute or hour as text, kind, count) of the runs finished since `first`."""
    return store.select(
        f"SELECT b, k, COUNT(*) FROM (SELECT {_bucket(store, 'finished_at')} AS b, {KIND} AS k "
        "FROM script_log WHERE started_at >= $early AND finished_at >= $first AND state = 'finished') AS runs "
        "GROUP BY b, k",
        {"early": first - timedelta(days=1), "first": first, "fmt": _format(store, per)},
    )


def time_to_result_histogram(
    store: Store, since: datetime, bounds: tuple[float, ...], per_hour: bool = False
) -> list[Any]:
    """(hour as text, or '' for all; runs; then for each bound, the runs whose time from request to result was
    at most that) of the runs that ran and finished since `since`."""
    waited = store.seconds_between("created_at", "finished_at")
    sums = ", ".join(f"SUM(CASE WHEN d <= {bound} THEN 1 ELSE 0 END)" for bound in bounds)
    hour = _bucket(store, "finished_at") if per_hour else "''"
    return store.select(
        f"SELECT h, COUNT(*), {sums} FROM (SELECT {hour} AS h, {waited} AS d FROM script_log "
        "WHERE started_at >= $early AND finished_at >= $since AND state = 'finished' "
        f"AND created_at IS NOT NULL AND COALESCE(outcome, '') NOT IN ({_NEVER_RAN})) AS runs GROUP BY h",
        {"early": since - timedelta(days=1), "since": since, "fmt": _format(store, "hour")},
    )


def slowest_scripts(store: Store, since: datetime, top: int) -> list[Any]:
    """(base, script, runs, average and longest seconds) of the `top` slowest scripts that ran since `since`."""
    ran = store.seconds_between("started_at", "finished_at")
    return store.select(
        f"SELECT dtable_uuid, script_name, COUNT(*), AVG({ran}), MAX({ran}) FROM script_log "
        "WHERE started_at >= $since AND state = 'finished' "
        f"AND COALESCE(outcome, '') NOT IN ({_NEVER_RAN}) GROUP BY dtable_uuid, script_name "
        f"ORDER BY AVG({ran}) DESC LIMIT {int(top)}",
        {"since": since},
    )


def failing_scripts(store: Store, since: datetime, top: int) -> list[Any]:
    """(base, script, runs, failures) of the `top` scripts with the most failed runs since `since`."""
    failures = "SUM(CASE WHEN success THEN 0 ELSE 1 END)"
    return store.select(
        f"SELECT dtable_uuid, script_name, COUNT(*), {failures} FROM script_log "
        "WHERE started_at >= $since AND state = 'finished' GROUP BY dtable_uuid, script_name "
        f"HAVING {failures} > 0 ORDER BY {failures} DESC, COUNT(*) DESC LIMIT {int(top)}",
        {"since": since},
    )


def recent_failures(store: Store, limit: int, tail: int) -> list[Any]:
    """(id, finished_at, base, script, owner, kind, return code, the output's last `tail` characters) of the
    last `limit` failed runs."""
    ending = f"RIGHT(output, {int(tail)})" if store.mysql else f"substr(output, -{int(tail)})"
    return store.select(
        f"SELECT id, finished_at, dtable_uuid, script_name, owner, {KIND}, return_code, {ending} FROM script_log "
        f"WHERE state = 'finished' AND success = 0 ORDER BY id DESC LIMIT {int(limit)}"
    )


def grouped_runs(store: Store, by: str, where: RunFilter, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Run counts per base or per day from script_log (admin statistics by-base / by-day)."""
    key = "dtable_uuid" if by == "base" else "DATE(started_at)"
    clauses, params = _filtered(where, *(["started_at IS NOT NULL"] if by == "day" else []))
    params.update(limit=limit, offset=offset)
    condition = " AND ".join(clauses)
    select_sql = (
        f"SELECT {key} AS grp, COUNT(id), SUM({store.seconds_between('started_at', 'finished_at')}), "
        "COUNT(CASE WHEN operate_from = 'manualy' THEN 1 END), "
        "COUNT(CASE WHEN operate_from = 'automation-rule' THEN 1 END), "
        "COUNT(CASE WHEN success = 1 THEN 1 END), COUNT(CASE WHEN success = 0 THEN 1 END) "
        f"FROM script_log WHERE {condition} GROUP BY {key} ORDER BY grp LIMIT $limit OFFSET $offset"
    )
    with store.reading():
        rows = store.select(select_sql, params)
        total = store.select(
            f"SELECT COUNT(*) FROM (SELECT {key} AS grp FROM script_log WHERE {condition} GROUP BY {key}) t",
            params,
        )[0]
    label = "base_uuid" if by == "base" else "date"
    results = []
    for row in rows:
        group = row[0]
        if by == "day":
            group = group.isoformat() if isinstance(group, date) else str(group)
        results.append(
            {
                label: group,
                "number_of_runs": int(row[1]),
                # rounded first: SQLite's julianday arithmetic lands a hair below whole seconds
                "total_run_time": int(round(float(row[2] or 0), 3)),
                "triggered_manually": int(row[3]),
                "triggered_by_automation_rule": int(row[4]),
                "successful_runs": int(row[5]),
                "unsuccessful_runs": int(row[6]),
            }
        )
    return results, int(total or 0)
