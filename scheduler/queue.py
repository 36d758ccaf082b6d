"""The queue is `script_log` itself: a dispatcher's claims, taken by fair share.

The claim is the state machine's `claim` transition (scheduler/lifecycle.py, which also owns the hand-off,
release and requeue); this module chooses which runs it takes (scheduler/fairshare.py) and whether their team
is over upstream's rate limit, and gives each claimed run to the dispatcher as a `ClaimedRun`.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from scheduler import fairshare, lifecycle
from scheduler.db import Store
from scheduler.fairshare import Team


def read_committed(store: Store) -> None:
    """Claims on MariaDB run under READ COMMITTED: InnoDB then locks only the rows it claims, not the gaps
    between them, so POST /run-script/ inserting new pending runs never waits for a claim."""

    def isolation(connection: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")

    store.on_mysql_connect(isolation)


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
        limited: set[Team] = set()

        def choose(now: datetime) -> list[lifecycle.Pick]:
            limited.clear()  # the transaction may be re-run: decide again from what it reads then
            teams = fairshare.queued_teams(self.store, now, self.window_secs)
            limited.update(
                t.team
                for t in teams
                if fairshare.rate_limited(t.usage, self.window_secs, self.total_thread_count, self.rate_limit_percent)
            )
            return [(*team.condition(), count) for team, count in fairshare.plan(teams, limit)]

        rows = lifecycle.claim(self.store, self.me, self.lease_secs, choose)
        claimed = []
        for r in rows:
            team = fairshare.team_of(r[4], r[3])
            claimed.append(ClaimedRun(int(r[0]), r[1], r[2], r[3], r[4], r[5], bool(r[6]), team, team in limited,
                                      int(r[7] or 1)))
        return claimed
