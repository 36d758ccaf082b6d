"""Fair share between teams and upstream's rate limit, both computed from the database.

A team is the org (org_id), or the owner for personal accounts (upstream stores org_id -1 for them; NULL and
0 are treated the same way). The next run comes from the team that used the least run time in the current
window (PYTHON_SCHEDULER_WINDOW_SECS), ties broken by fewer runs handed out in the window, then by the older
queued run; FIFO inside a team. Usage is read from `script_log`, so every dispatcher sees the same numbers.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from scheduler import queries
from scheduler.db import Store


@dataclass(frozen=True, order=True)
class Team:
    """Who a run counts against: an org, or a user without one."""

    org_id: int | None
    owner: str | None

    @property
    def key(self) -> str:
        return f"org:{self.org_id}" if self.org_id is not None else f"user:{self.owner}"

    @property
    def is_group(self) -> bool:
        """Group-owned bases ("…@seafile_group") get no notification, as upstream."""
        return self.org_id is None and "@seafile_group" in (self.owner or "")

    def condition(self) -> tuple[str, dict[str, Any]]:
        """SQL selecting this team's runs (with $team_org / $team_owner)."""
        if self.org_id is not None:
            return "org_id = $team_org", {"team_org": self.org_id}
        if self.owner is None:
            return "owner IS NULL AND (org_id IS NULL OR org_id IN (-1, 0))", {}
        return "owner = $team_owner AND (org_id IS NULL OR org_id IN (-1, 0))", {"team_owner": self.owner}


def team_of(org_id: int | None, owner: str | None) -> Team:
    """Upstream's get_team_or_user: the org when there is one, else the owner."""
    if org_id is not None and org_id not in (-1, 0):
        return Team(int(org_id), None)
    return Team(None, owner)


@dataclass
class Usage:
    seconds: float = 0.0  # finished runs in full plus the runs in flight so far: the fair-share key
    runs: int = 0
    finished_seconds: float = 0.0  # what upstream's rate limit counts: time of runs that ended


@dataclass(frozen=True)
class QueuedTeam:
    team: Team
    first_id: int
    queued: int
    usage: Usage


def window_start(now: datetime, window_secs: int) -> datetime:
    return now - timedelta(seconds=window_secs)


def window_usage(store: Store, now: datetime, window_secs: int) -> dict[Team, Usage]:
    """Run time per team of the runs handed out in the window: finished ones in full, the others so far.

    Call inside a transaction. Counting runs still in flight keeps a team with long runs from being
    preferred just because none of them has finished yet.
    """
    rows = queries.window_usage(store, now, window_start(now, window_secs))
    usage: dict[Team, Usage] = {}
    for org_id, owner, count, ended, running in rows:
        entry = usage.setdefault(team_of(org_id, owner), Usage())
        entry.runs += int(count or 0)
        entry.finished_seconds += max(0.0, float(ended or 0))
        entry.seconds += max(0.0, float(ended or 0)) + max(0.0, float(running or 0))
    return usage


def queued_teams(store: Store, now: datetime, window_secs: int) -> list[QueuedTeam]:
    """Every team with claimable runs, its oldest queued run and its window usage (inside a transaction)."""
    rows = queries.claimable_by_team(store, now)
    if not rows:
        return []
    first: dict[Team, tuple[int, int]] = {}
    for org_id, owner, first_id, count in rows:
        team = team_of(org_id, owner)
        old = first.get(team)
        first[team] = (min(int(first_id), old[0]), old[1] + int(count)) if old else (int(first_id), int(count))
    usage = window_usage(store, now, window_secs)
    return [QueuedTeam(team, fid, n, usage.get(team, Usage())) for team, (fid, n) in first.items()]


def plan(teams: list[QueuedTeam], limit: int) -> list[tuple[Team, int]]:
    """How many runs to take from each team, in the order they were chosen, for a batch of `limit`.

    Greedy: each pick goes to the team with the least (run time, runs handed out, oldest run); a pick adds
    one run to the team's count, so a batch interleaves teams of equal usage instead of draining the first.
    """
    heap = [(t.usage.seconds, t.usage.runs, t.first_id, t.team, t.queued) for t in teams if t.queued > 0]
    heapq.heapify(heap)
    taken: dict[Team, int] = {}
    order: list[Team] = []
    while heap and len(order) < limit:
        seconds, runs, first_id, team, left = heapq.heappop(heap)
        if team not in taken:
            taken[team] = 0
        taken[team] += 1
        order.append(team)
        if left > 1:
            heapq.heappush(heap, (seconds, runs + 1, first_id, team, left - 1))
    return [(team, taken[team]) for team in dict.fromkeys(order)]


def rate_limited(usage: Usage, window_secs: int, total_thread_count: int, percent: float) -> bool:
    """Upstream's rule: a team may use `percent` of the window's capacity (window times all slots).

    As upstream, only runs that ended count: runs in flight are not yet known to be long.
    """
    return usage.finished_seconds / (window_secs * total_thread_count) >= percent


def window_index(epoch: float, window_secs: int) -> int:
    """The fixed window an exceeded notification belongs to (once per team per window)."""
    return int(epoch // window_secs)
