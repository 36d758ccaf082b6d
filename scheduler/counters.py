"""Run counters kept in the database, bumped in the same transaction as the change they count.

Why not in-process Prometheus counters: runs are created by the API, claimed and handed off by dispatchers
(other processes, other containers or hosts), and ended by the API, the dispatchers and the maintenance sweep
(on systemd hosts a oneshot timer whose process is gone before any scrape). A counter bumped together with
the state change it counts is counted exactly once, wherever that happens, survives restarts, and one scrape
of the API reads them all. Each name is spread over SHARDS rows, so concurrent transactions seldom wait for
the same row lock; retention never touches the table.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from pony.orm import db_session

from scheduler.db import Store

TABLE = "run_counter"
SHARDS = 8

CREATED = "created"
CLAIMED = "claimed"
HANDED_OFF = "handed_off"
STARTED = "started"
FINISHED = "finished"  # label: the outcome (scheduler.outcomes)
HANDOFF_ERROR = "handoff_error"  # label: the cause
NAMES = (CREATED, CLAIMED, HANDED_OFF, STARTED, FINISHED, HANDOFF_ERROR)


def _upsert(store: Store) -> str:
    columns = f"INSERT INTO {TABLE} (name, label, shard, value) VALUES ($name, $label, $shard, $n)"
    if store.mysql:
        return f"{columns} ON DUPLICATE KEY UPDATE value = value + $n"
    return f"{columns} ON CONFLICT (name, label, shard) DO UPDATE SET value = value + $n"


def bump(store: Store, name: str, label: str = "", n: int = 1, key: int | None = None) -> None:
    """Add `n` inside the caller's transaction; `key` (a run id) picks the shard, else a random one."""
    if n <= 0:
        return
    shard = (key if key is not None else random.randrange(SHARDS)) % SHARDS
    store.db.execute(_upsert(store), {"name": name, "label": label, "shard": shard, "n": n})


def add(store: Store, counts: Mapping[tuple[str, str], int]) -> None:
    """Several counters in one transaction of their own (events that change no run, e.g. hand-off errors)."""
    wanted = {key: n for key, n in counts.items() if n > 0}
    if not wanted:
        return

    def tx() -> None:
        for (name, label), n in sorted(wanted.items()):
            bump(store, name, label, n)

    store.write(tx)


def read(store: Store) -> dict[tuple[str, str], int]:
    """Every counter's total: {(name, label): value}."""
    with db_session:
        rows = store.db.select(f"SELECT name, label, SUM(value) FROM {TABLE} GROUP BY name, label")
    return {(str(name), str(label or "")): int(total or 0) for name, label, total in rows}
