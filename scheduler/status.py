"""What the status page shows, read from script_log (and each node's /health): plain data, no HTML.

Every query filters on `started_at`, which is indexed and set on every finished run (the scheduler sets it when
it ends a run that never started), so the windows cost what they hold, not the table. Aggregation happens in SQL
(per-minute and per-hour buckets, a fixed-bucket histogram for the latency percentiles); the page's JSON is
cached briefly per process, so many open pages cost one set of queries every few seconds.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import requests
from pony.orm import db_session

from scheduler import outcomes
from scheduler.db import Store
from scheduler.fairshare import team_of

MINUTES = 180  # the per-minute chart: the last three hours
HOURS = 7 * 24  # the per-hour chart: the last seven days
TOP = 10
RECENT_FAILURES = 20
OUTPUT_TAIL = 400  # characters of a failed run's output shown
CACHE_SECONDS = 10.0
NODE_TIMEOUT = (1.0, 2.0)
# Upper bounds (seconds) of the time-to-result histogram the percentiles are estimated from.
LATENCY_BOUNDS = (0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 86400)
# Kinds that say nothing about how long a script runs: it never ran.
NEVER_RAN = (outcomes.RATE_LIMITED, outcomes.NOT_STARTED, outcomes.FETCH_FAILED)
KIND = f"COALESCE(outcome, CASE WHEN success THEN '{outcomes.SUCCESS}' ELSE '{outcomes.FAILED}' END)"


def _seconds(mysql: bool, start: str, end: str) -> str:
    if mysql:
        return f"TIMESTAMPDIFF(MICROSECOND, {start}, {end}) / 1000000"
    return f"(julianday({end}) - julianday({start})) * 86400.0"


def _bucket(mysql: bool, column: str) -> str:
    """The column's minute ("YYYY-MM-DD HH:MM") or hour ("YYYY-MM-DD HH") as text, the same on both backends.

    The format is the parameter $fmt (a literal % would clash with the MySQL driver's placeholders).
    """
    return f"DATE_FORMAT({column}, $fmt)" if mysql else f"strftime($fmt, {column})"


def _format(mysql: bool, per: str) -> str:
    if mysql:
        return "%Y-%m-%d %H:%i" if per == "minute" else "%Y-%m-%d %H"
    return "%Y-%m-%d %H:%M" if per == "minute" else "%Y-%m-%d %H"


def _as_datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def percentile(counts: list[int], q: float) -> float | None:
    """The q-quantile of a histogram over LATENCY_BOUNDS, interpolated within its bucket (as Prometheus does)."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            low = LATENCY_BOUNDS[index - 1] if index else 0.0
            return low + (LATENCY_BOUNDS[index] - low) * (rank - seen) / count
        seen += count
    return float(LATENCY_BOUNDS[-1])


@dataclass
class StatusReport:
    """Builds the page's data; `nodes` are the sandbox URLs the dispatchers use (PYTHON_SANDBOX_URLS)."""

    store: Store
    nodes: tuple[str, ...] = ()
    _cache: tuple[float, dict[str, Any]] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def data(self) -> dict[str, Any]:
        with self._lock:
            if self._cache is not None and time.monotonic() - self._cache[0] < CACHE_SECONDS:
                return self._cache[1]
        report = self.collect()
        with self._lock:
            self._cache = (time.monotonic(), report)
        return report

    def collect(self) -> dict[str, Any]:
        now = self.store.clock.now().replace(microsecond=0)
        with ThreadPoolExecutor(max_workers=max(1, len(self.nodes))) as pool:
            health = list(pool.map(node_health, self.nodes))
        with db_session:
            queue = self._queue(now)
            in_flight = self._in_flight()
            return {
                "generated_at": self.store.clock.iso(now),
                "queue": queue,
                "nodes": [{**h, "in_flight": in_flight.pop(h["url"], 0)} for h in health]
                + [{"url": url, "reachable": None, "in_flight": n} for url, n in sorted(in_flight.items())],
                "minutes": self._series(now, "minute", MINUTES),
                "hours": self._series(now, "hour", HOURS),
                "latency": self._latency(now),
                "slowest": self._slowest(now),
                "failing": self._failing(now),
                "recent_failures": self._recent_failures(),
            }

    # --- queue and nodes -------------------------------------------------------------------------------------

    def _queue(self, now: datetime) -> dict[str, Any]:
        rows = self.store.db.select(
            "SELECT org_id, owner, COUNT(*), MIN(created_at) FROM script_log "
            "WHERE state = 'pending' AND dispatched_at IS NULL GROUP BY org_id, owner"
        )
        teams: dict[str, dict[str, Any]] = {}
        for org_id, owner, count, oldest in rows:
            entry = teams.setdefault(team_of(org_id, owner).key, {"queued": 0, "oldest": None})
            entry["queued"] += int(count)
            created = _as_datetime(oldest)
            if created is not None and (entry["oldest"] is None or created < entry["oldest"]):
                entry["oldest"] = created
        listed = sorted(
            (
                {"team": key, "queued": entry["queued"], "oldest_seconds": _age(now, entry["oldest"])}
                for key, entry in teams.items()
            ),
            key=lambda t: (-t["queued"], t["team"]),
        )
        running = self.store.db.select("SELECT COUNT(*) FROM script_log WHERE state = 'running'")[0]
        return {
            "queued": sum(t["queued"] for t in listed),
            "oldest_seconds": max((t["oldest_seconds"] for t in listed), default=0.0),
            "running": int(running),
            "teams": listed[:TOP],
        }

    def _in_flight(self) -> dict[str, int]:
        rows = self.store.db.select(
            "SELECT sandbox_node, COUNT(*) FROM script_log "
            "WHERE state IN ('pending', 'running') AND dispatched_at IS NOT NULL GROUP BY sandbox_node"
        )
        return {str(node or ""): int(count) for node, count in rows}

    # --- runs over time --------------------------------------------------------------------------------------

    def _series(self, now: datetime, per: str, count: int) -> dict[str, Any]:
        """Finished runs per minute or hour by outcome, oldest first, every bucket present (zeros included)."""
        first, labels = buckets(now, per, count)
        index = {label: i for i, label in enumerate(labels)}
        rows = self.store.db.select(
            f"SELECT b, k, COUNT(*) FROM (SELECT {_bucket(self.store.mysql, 'finished_at')} AS b, {KIND} AS k "
            "FROM script_log WHERE started_at >= $early AND finished_at >= $first AND state = 'finished') AS runs "
            "GROUP BY b, k",
            {"early": first - timedelta(days=1), "first": first, "fmt": _format(self.store.mysql, per)},
        )
        series: dict[str, list[int]] = {}
        for label, kind, n in rows:
            if str(label) in index:
                series.setdefault(str(kind), [0] * count)[index[str(label)]] += int(n)
        ordered = {kind: series[kind] for kind in outcomes.ALL if kind in series}
        ordered.update({kind: values for kind, values in series.items() if kind not in ordered})
        return {"per": per, "labels": labels, "series": ordered}

    def _histogram(self, since: datetime, group_by_hour: bool = False) -> list[tuple[str, list[int]]]:
        waited = _seconds(self.store.mysql, "created_at", "finished_at")
        sums = ", ".join(
            f"SUM(CASE WHEN d <= {bound} THEN 1 ELSE 0 END)" for bound in LATENCY_BOUNDS
        )
        hour = _bucket(self.store.mysql, "finished_at") if group_by_hour else "''"
        never = ", ".join(f"'{kind}'" for kind in NEVER_RAN)
        rows = self.store.db.select(
            f"SELECT h, COUNT(*), {sums} FROM (SELECT {hour} AS h, {waited} AS d FROM script_log "
            "WHERE started_at >= $early AND finished_at >= $since AND state = 'finished' "
            f"AND created_at IS NOT NULL AND COALESCE(outcome, '') NOT IN ({never})) AS runs GROUP BY h",
            {"early": since - timedelta(days=1), "since": since, "fmt": _format(self.store.mysql, "hour")},
        )
        found = []
        for row in rows:
            cumulative = [int(v or 0) for v in row[2:]]
            counts = [b - a for a, b in zip([0, *cumulative[:-1]], cumulative, strict=True)]
            counts[-1] += int(row[1] or 0) - cumulative[-1]  # longer than the last bound
            found.append((str(row[0]), counts))
        return found

    def _latency(self, now: datetime) -> dict[str, Any]:
        """p50/p95 of the time from request to result (runs that ran), last hour and day, and per hour."""
        windows: dict[str, Any] = {}
        for name, span in (("hour", timedelta(hours=1)), ("day", timedelta(days=1))):
            counts = dict(self._histogram(now - span)).get("", [0] * len(LATENCY_BOUNDS))
            windows[name] = {"p50": percentile(counts, 0.5), "p95": percentile(counts, 0.95), "runs": sum(counts)}
        first, hours = buckets(now, "hour", 48)
        per_hour = dict(self._histogram(first, True))
        windows["by_hour"] = {
            "labels": hours,
            "p50": [percentile(per_hour.get(h, []), 0.5) for h in hours],
            "p95": [percentile(per_hour.get(h, []), 0.95) for h in hours],
        }
        return windows

    # --- scripts ---------------------------------------------------------------------------------------------

    def _slowest(self, now: datetime) -> list[dict[str, Any]]:
        ran = _seconds(self.store.mysql, "started_at", "finished_at")
        never = ", ".join(f"'{kind}'" for kind in NEVER_RAN)
        rows = self.store.db.select(
            f"SELECT dtable_uuid, script_name, COUNT(*), AVG({ran}), MAX({ran}) FROM script_log "
            "WHERE started_at >= $since AND state = 'finished' "
            f"AND COALESCE(outcome, '') NOT IN ({never}) GROUP BY dtable_uuid, script_name "
            f"ORDER BY AVG({ran}) DESC LIMIT {TOP}",
            {"since": now - timedelta(days=1)},
        )
        return [
            {"base": str(b), "script": str(s), "runs": int(n), "avg_seconds": _round(avg), "max_seconds": _round(top)}
            for b, s, n, avg, top in rows
        ]

    def _failing(self, now: datetime) -> list[dict[str, Any]]:
        failures = "SUM(CASE WHEN success THEN 0 ELSE 1 END)"
        rows = self.store.db.select(
            f"SELECT dtable_uuid, script_name, COUNT(*), {failures} FROM script_log "
            "WHERE started_at >= $since AND state = 'finished' GROUP BY dtable_uuid, script_name "
            f"HAVING {failures} > 0 ORDER BY {failures} DESC, COUNT(*) DESC LIMIT {TOP}",
            {"since": now - timedelta(days=1)},
        )
        return [{"base": str(b), "script": str(s), "runs": int(n), "failures": int(f)} for b, s, n, f in rows]

    def _recent_failures(self) -> list[dict[str, Any]]:
        tail = f"RIGHT(output, {OUTPUT_TAIL})" if self.store.mysql else f"substr(output, -{OUTPUT_TAIL})"
        rows = self.store.db.select(
            f"SELECT id, finished_at, dtable_uuid, script_name, owner, {KIND}, return_code, {tail} FROM script_log "
            f"WHERE state = 'finished' AND success = 0 ORDER BY id DESC LIMIT {RECENT_FAILURES}"
        )
        return [
            {
                "id": int(run_id),
                "finished_at": self.store.clock.iso(finished),
                "base": str(base),
                "script": str(script),
                "owner": owner,
                "outcome": str(kind),
                "return_code": code,
                "output": output or "",
            }
            for run_id, finished, base, script, owner, kind, code, output in rows
        ]


def buckets(now: datetime, per: str, count: int) -> tuple[datetime, list[str]]:
    """The start of the first of `count` minutes or hours ending with the current one, and their labels."""
    step = timedelta(minutes=1) if per == "minute" else timedelta(hours=1)
    last = now.replace(second=0, microsecond=0)
    if per == "hour":
        last = last.replace(minute=0)
    first = last - step * (count - 1)
    fmt = "%Y-%m-%d %H:%M" if per == "minute" else "%Y-%m-%d %H"
    return first, [(first + step * i).strftime(fmt) for i in range(count)]


def _age(now: datetime, then: datetime | None) -> float:
    return max(0.0, (now - then).total_seconds()) if then is not None else 0.0


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


def node_health(url: str) -> dict[str, Any]:
    """A sandbox node's /health, reduced to what the page shows; never raises."""
    try:
        response = requests.get(f"{url}/health", timeout=NODE_TIMEOUT)
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    except (requests.RequestException, ValueError) as exc:
        return {"url": url, "reachable": False, "status": f"not reachable ({type(exc).__name__})"}
    if not isinstance(body, dict):
        body = {}
    slots = body.get("slots")
    slots = slots if isinstance(slots, dict) else {}
    limits = body.get("limits")
    limits = limits if isinstance(limits, dict) else {}
    problems = body.get("problems")
    status = str(body.get("status") or f"HTTP {response.status_code}")
    if isinstance(problems, list) and problems:
        status += ": " + "; ".join(str(p) for p in problems)
    return {
        "url": url,
        "reachable": True,
        "status": status[:300],
        "healthy": response.status_code == 200 and body.get("status") == "ok",
        "node": str(body.get("node") or "")[:100],
        "slots": {k: slots.get(k) for k in ("total", "busy", "free") if isinstance(slots.get(k), int)},
        "enforcement": {k: str(limits[k]) for k in ("memory", "pids", "cpu") if k in limits},
    }
