"""The run as the API shows it: created pending, read back in upstream's JSON shapes, marked running, finished.

The state changes are scheduler/lifecycle.py's (the one owner of the run's state machine) and the reads are
scheduler/queries.py's; this module shapes what the API answers. The lifecycle's calls are offered here under
the names the API and its callers have always used.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from scheduler import callback_auth, lifecycle, queries
from scheduler.callback_auth import Credential
from scheduler.db import Store
from scheduler.lifecycle import NewRun, Outcome, RunResult
from scheduler.queries import RunFilter

__all__ = [
    "NewRun", "Outcome", "RunFilter", "RunResult", "create_run", "fail_run", "get_run", "list_logs", "list_runs",
    "mark_running", "record_result", "to_json",
]

create_run = lifecycle.create
fail_run = lifecycle.fail


def mark_running(
    store: Store,
    run_id: int,
    started_at: datetime | None = None,
    waited: Callable[[float], None] | None = None,
    credential: Credential | None = None,
) -> Outcome:
    """The run started (lifecycle.start). With a `credential` (a callback): refused (callback_auth.Refused)
    unless it is the run's own secret and the run was handed off and not yet running."""
    admit = callback_auth.admit_start(credential, store.clock) if credential is not None else None
    return lifecycle.start(store, run_id, started_at, waited, admit)


def record_result(store: Store, run_id: int, result: RunResult, credential: Credential | None = None,
                  waited: Callable[[float], None] | None = None) -> Outcome:
    """The run ended (lifecycle.finish). With a `credential` (a callback): refused (callback_auth.Refused) unless
    it is the run's own secret and the run was handed off and not finished; unbelievable times are not stored.
    `waited` hears how long a run that reported no start before its result was queued."""
    admit = callback_auth.admit_result(credential, store.clock) if credential is not None else None
    return lifecycle.finish(store, run_id, result, admit, waited)


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
    """One run by id, in upstream's JSON."""
    row = queries.run_by_id(store, run_id)
    return to_json(store, row) if row is not None else None


def list_logs(
    store: Store, uuids: tuple[str, ...], script_name: str, descending: bool, offset: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """One script's runs in a base, newest first unless asked otherwise."""
    rows, count = queries.script_runs(store, uuids, script_name, descending, offset, limit)
    return [to_json(store, row) for row in rows], count


def list_runs(store: Store, where: RunFilter, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Runs for /admin/runs/, newest first, without context_data and output (they can be megabytes)."""
    rows, total = queries.admin_runs(store, where, offset, limit)
    return [to_json(store, row, full=False) for row in rows], total
