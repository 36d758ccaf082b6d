"""Pony entities over upstream's tables.

Entities are defined by a function on a given `Database`, not at import time, so one process can hold
several databases (tests run the same code against SQLite and MariaDB side by side).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from pony.orm import Database, LongStr, Optional, PrimaryKey, Required

PENDING = "pending"
RUNNING = "running"
FINISHED = "finished"
STATES = (PENDING, RUNNING, FINISHED)


@dataclass(frozen=True)
class Entities:
    db: Database
    ScriptLog: Any
    DTableStats: Any
    UserStats: Any
    OrgStats: Any
    VersionHistory: Any


def define_entities(db: Database) -> Entities:
    """Declare the entities on `db`; call before `generate_mapping`."""

    class ScriptLog(db.Entity):
        _table_ = "script_log"
        id = PrimaryKey(int, auto=True)
        dtable_uuid = Required(str, 36)
        owner = Optional(str, 255, nullable=True)
        org_id = Optional(int, nullable=True)
        script_name = Required(str, 255)
        context_data = Optional(LongStr, nullable=True)
        started_at = Optional(datetime, precision=6, nullable=True)
        finished_at = Optional(datetime, precision=6, nullable=True)
        success = Optional(bool, nullable=True)
        return_code = Optional(int, nullable=True)
        output = Optional(LongStr, nullable=True)
        operate_from = Optional(str, 50, nullable=True)
        state = Optional(str, 10, nullable=True)
        created_at = Optional(datetime, precision=6, nullable=True)
        # Not in upstream's schema; upstream's code never selects these.
        script_content = Optional(LongStr, nullable=True, lazy=True)
        draft_api_token = Optional(LongStr, nullable=True, lazy=True)
        claimed_by = Optional(str, 255, nullable=True)
        lease_until = Optional(datetime, precision=6, nullable=True)
        sandbox_node = Optional(str, 255, nullable=True)
        attempt = Optional(int, nullable=True, default=0)
        dispatched_at = Optional(datetime, precision=6, nullable=True)
        outcome = Optional(str, 20, nullable=True)
        callback_secret_hash = Optional(str, 64, nullable=True)

    class DTableStats(db.Entity):
        _table_ = "dtable_run_script_statistics"
        id = PrimaryKey(int, auto=True)
        dtable_uuid = Required(str, 36)
        run_date = Required(date)
        total_run_count = Optional(int, default=0)
        total_run_time = Optional(float, default=0)
        update_at = Optional(datetime, precision=6, nullable=True)

    class UserStats(db.Entity):
        _table_ = "user_run_script_statistics"
        id = PrimaryKey(int, auto=True)
        username = Required(str, 255)
        org_id = Optional(int, nullable=True)
        run_date = Required(date)
        total_run_count = Optional(int, default=0)
        total_run_time = Optional(float, default=0)
        update_at = Optional(datetime, precision=6, nullable=True)

    class OrgStats(db.Entity):
        _table_ = "org_run_script_statistics"
        id = PrimaryKey(int, auto=True)
        org_id = Required(int)
        run_date = Required(date)
        total_run_count = Optional(int, default=0)
        total_run_time = Optional(float, default=0)
        update_at = Optional(datetime, precision=6, nullable=True)

    class VersionHistory(db.Entity):
        # The table has no key; Pony needs one, and (version, update_at) is unique in practice.
        _table_ = "version_history"
        version = Required(str, 10)
        update_at = Required(datetime, precision=6)
        PrimaryKey(version, update_at)

    return Entities(db, ScriptLog, DTableStats, UserStats, OrgStats, VersionHistory)
