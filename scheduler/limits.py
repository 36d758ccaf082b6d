"""The monthly run limit, checked when SeaTable asks to start a run (as upstream does)."""

from __future__ import annotations

from scheduler import stats
from scheduler.db import Store
from scheduler.seatable import SeaTable


def can_run(store: Store, seatable: SeaTable, owner: str, org_id: int | None, limit: int | None) -> bool:
    """True while the team (or user) has runs left this month.

    A falsy `limit` means the request did not carry one, so SeaTable is asked; when SeaTable cannot
    answer the run is refused, as upstream refuses it.
    """
    if org_id == -1 and stats.is_group_owner(owner):
        return True
    if not limit:
        if not (org_id and org_id != -1) and not owner:
            return True
        limit = seatable.scripts_running_limit(owner, org_id)
        if limit is None:
            return False
    if limit == -1:
        return True
    return stats.monthly_count(store, owner, org_id, store.clock.today()) < limit
