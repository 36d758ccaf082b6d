"""The queue is `script_log` itself: claims, the hand-off mark, and releases, as short conditional writes.

A run's dispatch life in the extra columns (state stays upstream's `pending` until the running callback):
  claimed     claimed_by = dispatcher, lease_until = now + lease, attempt + 1 (dispatched_at NULL)
  handing off dispatched_at and sandbox_node set, committed BEFORE the POST; lease_until becomes the time
              by which the node must have vouched for the run (sweeper); callback_secret_hash is the digest
              of the secret in this hand-off's body (a new hand-off replaces it)
  released    all four cleared again, only while the run provably never reached a sandbox
Every write re-checks the state it expects, so a dispatcher that lost its lease changes nothing.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from scheduler import counters, fairshare
from scheduler.db import Store
from scheduler.fairshare import CLAIMABLE, Team


def read_committed(store: Store) -> None:
    """Claims on MariaDB run under READ COMMITTED: InnoDB then locks only the rows it claims, not the gaps
    between them, so POST /run-script/ inserting new pending runs never waits for a claim."""
    if not store.mysql:
        return

    @store.db.on_connect(provider="mysql")
    def _isolation(_db: Any, connection: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")


def dispatcher_id() -> str:
    """host:pid:random, unique per process start (a restarted process never inherits old claims)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True)
class ClaimedRun:
    id: int
    dtable_uuid: str
    script_name: str
    owner: str | None
    org_id: int | None
    context_data: str | None
    is_draft: bool
    team: Team
    rate_limited: bool
    attempt: int


def _in_list(prefix: str, ids: list[int]) -> tuple[str, dict[str, Any]]:
    names = [f"{prefix}{i}" for i in range(len(ids))]
    return ", ".join("$" + n for n in names), dict(zip(names, ids, strict=True))


@dataclass
class Claim:
    """Claiming settings of one dispatcher."""

    store: Store
    me: str
    lease_secs: int
    window_secs: int
    total_thread_count: int
    rate_limit_percent: float

    def claim(self, limit: int) -> list[ClaimedRun]:
        """Take up to `limit` runs by fair share in one short transaction."""
        return self.store.write(lambda: self._claim_tx(limit))

    def _claim_tx(self, limit: int) -> list[ClaimedRun]:
        store = self.store
        now = store.clock.now()
        teams = fairshare.queued_teams(store, now, self.window_secs)
        if not teams:
            return []
        limited = {
            t.team
            for t in teams
            if fairshare.rate_limited(t.usage, self.window_secs, self.total_thread_count, self.rate_limit_percent)
        }
        lock = " FOR UPDATE SKIP LOCKED" if store.mysql else ""  # SQLite: the write transaction is IMMEDIATE
        ids: list[int] = []
        for team, count in fairshare.plan(teams, limit):
            condition, params = team.condition()
            rows = store.db.select(
                f"SELECT id FROM script_log WHERE {CLAIMABLE} AND {condition} ORDER BY id LIMIT $n{lock}",
                {"now": now, "n": count, **params},
            )
            ids.extend(int(r) for r in rows)
        if not ids:
            return []
        placeholders, params = _in_list("c", ids)
        store.db.execute(
            "UPDATE script_log SET claimed_by = $me, lease_until = $lease, attempt = COALESCE(attempt, 0) + 1 "
            f"WHERE id IN ({placeholders})",
            {"me": self.me, "lease": now + timedelta(seconds=self.lease_secs), **params},
        )
        counters.bump(store, counters.CLAIMED, n=len(ids))
        rows = store.db.select(
            "SELECT id, dtable_uuid, script_name, owner, org_id, context_data, "
            f"script_content IS NOT NULL, attempt FROM script_log WHERE id IN ({placeholders})",
            params,
        )
        by_id = {int(r[0]): r for r in rows}
        claimed = []
        for run_id in ids:  # keep the fair-share order
            r = by_id[run_id]
            team = fairshare.team_of(r[4], r[3])
            attempt = int(r[7] or 1)
            claimed.append(ClaimedRun(run_id, r[1], r[2], r[3], r[4], r[5], bool(r[6]), team, team in limited, attempt))
        return claimed


def draft_payload(store: Store, run_id: int) -> tuple[str, str] | None:
    """script_content and draft_api_token of a draft run (None once erased)."""
    from pony.orm import db_session

    with db_session:
        rows = store.db.select(
            "SELECT script_content, draft_api_token FROM script_log WHERE id = $run_id", {"run_id": run_id}
        )
    if not rows or rows[0][0] is None:
        return None
    return str(rows[0][0]), str(rows[0][1] or "")


def mark_handing_off(
    store: Store, me: str, assignments: dict[int, str], deadline: datetime, digests: dict[int, str] | None = None
) -> set[int]:
    """Phase one: record node, time and callback secret digest for each run BEFORE posting it; returns the runs
    still ours.

    From here on the run may reach a sandbox, so only the sweeper (which asks the node) may release it.
    """
    digests = digests or {}

    def tx() -> set[int]:
        now = store.clock.now()
        ours: set[int] = set()
        by_node: dict[str, list[int]] = {}
        for run_id, node in assignments.items():
            by_node.setdefault(node, []).append(run_id)
        for node, ids in by_node.items():
            placeholders, params = _in_list("h", ids)
            # One statement per node: each run's digest picked by id (its bind name is the id's, "h<i>").
            cases = " ".join(f"WHEN ${name} THEN $k{i}" for i, name in enumerate(params))
            keyed = {f"k{i}": digests.get(run_id) for i, run_id in enumerate(params.values())}
            store.db.execute(
                "UPDATE script_log SET dispatched_at = $now, sandbox_node = $node, lease_until = $deadline, "
                f"callback_secret_hash = CASE id {cases} END "
                f"WHERE id IN ({placeholders}) AND claimed_by = $me AND state = 'pending' "
                "AND dispatched_at IS NULL AND lease_until >= $now",
                {"now": now, "node": node, "deadline": deadline, "me": me, **params, **keyed},
            )
            rows = store.db.select(
                f"SELECT id FROM script_log WHERE id IN ({placeholders}) AND claimed_by = $me "
                "AND sandbox_node = $node AND dispatched_at IS NOT NULL AND state = 'pending'",
                {"node": node, "me": me, **params},
            )
            ours.update(int(r) for r in rows)
        return ours

    return store.write(tx)


def release_claims(store: Store, me: str, ids: list[int], delay: float = 0.0) -> int:
    """Give claimed runs that were never marked as handing off back to the queue (after `delay` seconds)."""
    if not ids:
        return 0
    placeholders, params = _in_list("r", ids)

    def tx() -> int:
        until = store.clock.now() + timedelta(seconds=delay) if delay else None
        cursor = store.db.execute(
            "UPDATE script_log SET claimed_by = NULL, lease_until = $until "
            f"WHERE id IN ({placeholders}) AND claimed_by = $me AND dispatched_at IS NULL AND state = 'pending'",
            {"me": me, "until": until, **params},
        )
        return int(cursor.rowcount)

    return store.write(tx)


def release_unsent(store: Store, ids: list[int], node: str) -> int:
    """Undo phase one for runs whose POST provably never reached `node` (429, refused connection...)."""
    if not ids:
        return 0
    placeholders, params = _in_list("u", ids)

    def tx() -> int:
        cursor = store.db.execute(
            "UPDATE script_log SET claimed_by = NULL, lease_until = NULL, dispatched_at = NULL, sandbox_node = NULL, "
            "callback_secret_hash = NULL "
            f"WHERE id IN ({placeholders}) AND sandbox_node = $node AND state = 'pending' AND started_at IS NULL",
            {"node": node, **params},
        )
        return int(cursor.rowcount)

    return store.write(tx)


def erase_drafts(store: Store, ids: list[int]) -> None:
    """A sandbox holds the draft now: the token and code need not stay in the database."""
    if not ids:
        return
    placeholders, params = _in_list("d", ids)
    store.write(
        lambda: store.db.execute(
            f"UPDATE script_log SET draft_api_token = NULL, script_content = NULL WHERE id IN ({placeholders})",
            params,
        )
    )
    store.scrub()
