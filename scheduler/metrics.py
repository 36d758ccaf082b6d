"""The scheduler's /metrics: what every scheduler process did, the queue now, and the API's own histograms.

Three sources, one scrape of the API:
- run counters (created, claimed, handed off, started, finished by outcome, hand-off errors by cause) from the
  database, where every process bumps them with the change they count (scheduler/counters.py);
- gauges read from script_log at scrape time: runs queued and the oldest queued run, per team and in all, and
  the runs each sandbox node holds;
- histograms (run duration, time to start) and callback errors, observed by the API's gunicorn workers. Several
  workers share them through prometheus_client's multiprocess mode: `serve` gives each start of the API a fresh
  directory (PROMETHEUS_MULTIPROC_DIR, set before the workers fork) and removes those of earlier starts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from scheduler import counters, outcomes, queries
from scheduler.db import Store
from scheduler.fairshare import team_of
from scheduler.metrics_dir import MULTIPROC_ENV

log = logging.getLogger(__name__)

MAX_TEAMS = 50  # teams shown with their own series (the longest queues); the totals cover all
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600)
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

COUNTERS = {
    counters.CREATED: ("seatable_scheduler_runs_created", "Runs SeaTable asked for (POST /run-script/, drafts)."),
    counters.CLAIMED: ("seatable_scheduler_runs_claimed", "Claims of queued runs by dispatchers."),
    counters.HANDED_OFF: ("seatable_scheduler_runs_handed_off", "Runs a sandbox node accepted."),
    counters.STARTED: ("seatable_scheduler_runs_started", "Runs a sandbox reported running."),
}
HANDOFF_CAUSES = ("not_reachable", "busy", "refused", "rejected", "uncertain", "lease_lost")


# --- what the API's workers observe -----------------------------------------------------------------------


class ApiMetrics:
    """Histograms and counters of one API worker (summed over workers in multiprocess mode)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        register = None if os.environ.get(MULTIPROC_ENV) else self.registry
        self.run_duration = Histogram(
            "seatable_scheduler_run_duration_seconds",
            "Run time of runs a sandbox reported, by outcome.",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=register,
        )
        self.time_to_start = Histogram(
            "seatable_scheduler_time_to_start_seconds",
            "Time from the request (POST /run-script/) to the sandbox's running callback.",
            buckets=WAIT_BUCKETS,
            registry=register,
        )
        self.callback_errors = Counter(
            "seatable_scheduler_callback_errors",
            "Callbacks from sandboxes the scheduler refused or repaired, by callback and cause.",
            ["callback", "cause"],
            registry=register,
        )
        for callback in ("running", "result"):
            for cause in ("forbidden", "refused", "bad_request", "too_large", "unknown_run", "malformed"):
                self.callback_errors.labels(callback, cause)

    def finished(self, outcome: str, spend_time: float | None) -> None:
        if spend_time is not None:
            self.run_duration.labels(outcome).observe(spend_time)

    def waited(self, seconds: float) -> None:
        self.time_to_start.observe(seconds)

    def callback_error(self, callback: str, cause: str) -> None:
        self.callback_errors.labels(callback, cause).inc()


# --- read from the database at scrape time ----------------------------------------------------------------


class DatabaseCollector:
    """Counters and queue gauges from the database; `seatable_scheduler_database_up` 0 when it cannot answer."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("seatable_scheduler_database_up", "1 when the scheduler's database answered.")
        try:
            totals = counters.read(self.store)
            queue = self._queue()
            nodes = self._nodes()
        except Exception as exc:  # a scrape reports a broken database, it does not fail with it
            log.warning("metrics: database not readable: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._counters(totals)
        yield from queue
        yield nodes

    @staticmethod
    def _counters(totals: dict[tuple[str, str], int]) -> Iterator[Metric]:
        for name, (metric, text) in COUNTERS.items():
            family = CounterMetricFamily(metric, text)
            family.add_metric([], totals.get((name, ""), 0))
            yield family
        finished = CounterMetricFamily(
            "seatable_scheduler_runs_finished", "Runs that ended, by what ended them.", labels=["outcome"]
        )
        for outcome in outcomes.ALL:
            finished.add_metric([outcome], totals.get((counters.FINISHED, outcome), 0))
        yield finished
        errors = CounterMetricFamily(
            "seatable_scheduler_handoff_errors", "Hand-offs to sandbox nodes that did not succeed, by cause.",
            labels=["cause"],
        )
        for cause in HANDOFF_CAUSES:
            errors.add_metric([cause], totals.get((counters.HANDOFF_ERROR, cause), 0))
        yield errors

    def _queue(self) -> list[Metric]:
        now = self.store.clock.now()
        with self.store.reading():
            rows = queries.queued_by_team(self.store)
        teams: dict[str, list[Any]] = {}
        for org_id, owner, count, oldest in rows:
            key = team_of(org_id, owner).key
            entry = teams.setdefault(key, [0, None])
            entry[0] += int(count)
            created = _as_datetime(oldest)
            if created is not None and (entry[1] is None or created < entry[1]):
                entry[1] = created
        ages = {key: max(0.0, (now - first).total_seconds()) if first else 0.0 for key, (_n, first) in teams.items()}
        total = GaugeMetricFamily("seatable_scheduler_queued_runs", "Runs waiting for a sandbox, in all.")
        total.add_metric([], sum(n for n, _ in teams.values()))
        oldest_all = GaugeMetricFamily(
            "seatable_scheduler_queued_oldest_seconds", "Age of the oldest run waiting for a sandbox (0: none)."
        )
        oldest_all.add_metric([], max(ages.values(), default=0.0))
        per_team = GaugeMetricFamily(
            "seatable_scheduler_team_queued_runs", "Runs waiting, per team (org:ID or user:NAME).", labels=["team"]
        )
        per_team_age = GaugeMetricFamily(
            "seatable_scheduler_team_queued_oldest_seconds", "Age of a team's oldest waiting run.", labels=["team"]
        )
        for key, (count, _first) in sorted(teams.items(), key=lambda item: -item[1][0])[:MAX_TEAMS]:
            per_team.add_metric([key], count)
            per_team_age.add_metric([key], ages[key])
        return [total, oldest_all, per_team, per_team_age]

    def _nodes(self) -> Metric:
        with self.store.reading():
            in_flight = queries.in_flight_by_node(self.store)
        family = GaugeMetricFamily(
            "seatable_scheduler_node_runs", "Runs handed to a sandbox node and not finished yet.", labels=["node"]
        )
        for node, count in in_flight.items():
            family.add_metric([node], count)
        return family


def _as_datetime(value: Any) -> Any:
    if value is None or not isinstance(value, str):
        return value
    from datetime import datetime

    return datetime.fromisoformat(value)


def registry_factory(store: Store, api: ApiMetrics) -> Callable[[], CollectorRegistry]:
    """What GET /metrics exposes: in multiprocess mode a registry over the workers' files, built per scrape."""
    database = DatabaseCollector(store)
    if not os.environ.get(MULTIPROC_ENV):
        api.registry.register(database)
        return lambda: api.registry

    def build() -> CollectorRegistry:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(database)
        return registry

    return build
