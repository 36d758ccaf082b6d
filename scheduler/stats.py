"""Run statistics: the per-day counters upstream keeps, and the reports read from them.

Counters are bumped with one atomic upsert per table inside the result's transaction, so concurrent
results never lose an increment. Reports use portable SQL; the only dialect difference is how a
duration between two timestamps is computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from scheduler.db import Store

_UPSERT_TAIL = {
    True: "ON DUPLICATE KEY UPDATE total_run_count = COALESCE(total_run_count, 0) + 1, "
    "total_run_time = COALESCE(total_run_time, 0) + VALUES(total_run_time), update_at = VALUES(update_at)",
    False: "ON CONFLICT ({keys}) DO UPDATE SET total_run_count = COALESCE(total_run_count, 0) + 1, "
    "total_run_time = COALESCE(total_run_time, 0) + excluded.total_run_time, update_at = excluded.update_at",
}

# table, key column reported as, key column in the table
TARGETS = {
    "user": ("user_run_script_statistics", "username", "username"),
    "org": ("org_run_script_statistics", "org_id", "org_id"),
    "base": ("dtable_run_script_statistics", "base_uuid", "dtable_uuid"),
}
ORDER_FIELDS = {"total_run_time": "run_time", "total_run_count": "run_count"}


def is_group_owner(owner: str | None) -> bool:
    """Group-owned bases ("…@seafile_group") have no user to count against or limit."""
    return bool(owner) and "@seafile_group" in str(owner)


def _upsert(store: Store, table: str, unique: str, keys: dict[str, Any], spend: float, now: datetime) -> None:
    """Insert today's counter row or bump it; `unique` is the key column next to run_date."""
    columns = [*keys, "run_date", "total_run_count", "total_run_time", "update_at"]
    params = {**keys, "run_date": now.date(), "total_run_count": 1, "total_run_time": spend, "update_at": now}
    tail = _UPSERT_TAIL[store.mysql].format(keys=f"{unique}, run_date")
    store.execute(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('$' + c for c in columns)}) {tail}",
        params,
    )


def count_run(
    store: Store, dtable_uuid: str, owner: str | None, org_id: int | None, spend: float, now: datetime
) -> None:
    """Add one finished run to today's counters; call inside the transaction that finishes the run."""
    _upsert(store, "dtable_run_script_statistics", "dtable_uuid", {"dtable_uuid": dtable_uuid}, spend, now)
    if owner and not is_group_owner(owner):
        keys = {"username": owner, "org_id": org_id}
        _upsert(store, "user_run_script_statistics", "username", keys, spend, now)
    if org_id and org_id != -1:
        _upsert(store, "org_run_script_statistics", "org_id", {"org_id": org_id}, spend, now)


def month_bounds(month: date) -> tuple[date, date]:
    first = month.replace(day=1)
    following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first, following


def monthly_count(store: Store, username: str | None, org_id: int | None, month: date) -> int:
    """Runs counted this month for a team (org) or a user, as the monthly limit sees them."""
    first, following = month_bounds(month)
    value: int | str | None
    if org_id and org_id != -1:
        table, column, value = "org_run_script_statistics", "org_id", org_id
    else:
        table, column, value = "user_run_script_statistics", "username", username
    with store.reading():
        total = store.select(
            f"SELECT SUM(total_run_count) FROM {table} "
            f"WHERE {column} = $value AND run_date >= $first AND run_date < $following",
            {"value": value, "first": first, "following": following},
        )[0]
    return int(total or 0)


@dataclass(frozen=True)
class Page:
    offset: int
    limit: int


def by_month(
    store: Store, target: str, month: date, order_by: str | None, descending: bool, page: Page
) -> tuple[int, list[dict[str, Any]]]:
    """Per user, org or base totals of one month (admin statistics); the total is 0 past the last page."""
    table, label, column = TARGETS[target]
    first, following = month_bounds(month)
    params = {"first": first, "following": following, "limit": page.limit, "offset": page.offset}
    where = "run_date >= $first AND run_date < $following"
    direction = "DESC" if descending else "ASC"
    order = f"{ORDER_FIELDS[order_by]} {direction}, {column}" if order_by else f"{column} {direction}"
    with store.reading():
        rows = store.select(
            f"SELECT {column}, SUM(total_run_count) AS run_count, SUM(total_run_time) AS run_time "
            f"FROM {table} WHERE {where} GROUP BY {column} ORDER BY {order} LIMIT $limit OFFSET $offset",
            params,
        )
        total = 0  # upstream counts only when the page has results: a page past the end answers count 0
        if rows:
            total = store.select(f"SELECT COUNT(DISTINCT {column}) FROM {table} WHERE {where}", params)[0]
    results = [{label: row[0], "total_run_count": int(row[1] or 0), "total_run_time": int(row[2] or 0)} for row in rows]
    return int(total or 0), results
