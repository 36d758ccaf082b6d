"""The sandbox's /metrics: runs by outcome and their duration, and the node's state read at scrape time.

One gunicorn worker holds every slot, so one registry suffices (no multiprocess mode). Events are counted where
they happen (RunService); the rest is read from the live objects at each scrape: slots, the warm pool, egress,
the outbox, the runner containers Podman holds for this node, and which limits the host enforces.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

OUTCOMES = (
    "success",
    "failed",
    "time_limit",
    "output_limit",
    "out_of_memory",
    "cpu_limit",
    "killed_by_signal",
    "sandbox_error",
    "sandbox_lost",
    "fetch_failed",
)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600)


class RunMetrics:
    """What RunService counts as runs come and go."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.accepted = Counter("seatable_sandbox_runs_accepted", "Runs this node accepted.", registry=registry)
        self.refused = Counter(
            "seatable_sandbox_runs_refused", "Hand-offs this node refused, by cause (busy, duplicate, unavailable).",
            ["cause"],
            registry=registry,
        )
        self.finished = Counter(
            "seatable_sandbox_runs_finished", "Runs that ended here, by outcome.", ["outcome"], registry=registry
        )
        self.duration = Histogram(
            "seatable_sandbox_run_duration_seconds", "Run time from the job's delivery to the runner to its end.",
            ["outcome"], buckets=DURATION_BUCKETS, registry=registry,
        )
        for cause in ("busy", "duplicate", "unavailable"):
            self.refused.labels(cause)
        for outcome in OUTCOMES:
            self.finished.labels(outcome)

    def ended(self, outcome: str, seconds: float) -> None:
        self.finished.labels(outcome).inc()
        self.duration.labels(outcome).observe(seconds)


def _gauge(name: str, text: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def _counter(name: str, text: str, values: dict[str, float], label: str) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


class NodeCollector:
    """Reads the sandbox's live state at each scrape; `sandbox` is server.Sandbox (duck-typed, no import cycle)."""

    def __init__(self, sandbox: Any, containers: Callable[[], int]) -> None:
        self.sandbox = sandbox
        self.containers = containers

    def collect(self) -> Iterator[Metric]:
        box = self.sandbox
        config = box.config
        busy = box.service.busy
        slots = GaugeMetricFamily("seatable_sandbox_slots", "Run slots of this node, by state.", labels=["state"])
        slots.add_metric(["busy"], busy)
        slots.add_metric(["free"], config.slots - busy)
        yield slots
        try:
            alive, podman_up = float(self.containers()), 1.0
        except Exception as exc:  # Podman down: say so instead of failing the scrape
            log.warning("metrics: podman not reachable: %s", type(exc).__name__)
            alive, podman_up = float("nan"), 0.0
        yield _gauge("seatable_sandbox_podman_up", "1 when the sandbox user's Podman API answered.", podman_up)
        yield _gauge("seatable_sandbox_healthy", "1 when the node takes runs (/health ok: Podman, image, outbox, "
                     "disk); 0 while it answers 503.", 0.0 if box.node_health.problems() else 1.0)
        yield _gauge("seatable_sandbox_runner_containers", "Runner containers of this node Podman holds (live, "
                     "warm or being removed).", alive)
        yield from self._isolation(box)
        yield from self._pool(box.pool)
        yield from self._outbox(box.outbox)
        yield from self._network(box)

    @staticmethod
    def _isolation(box: Any) -> Iterator[Metric]:
        enforcement = GaugeMetricFamily(
            "seatable_sandbox_enforcement", "1 for how each limit is enforced here (cgroup, rlimit or none).",
            labels=["limit", "mode"],
        )
        facts = box.driver.enforcement
        for limit in ("memory", "pids", "cpu"):
            enforcement.add_metric([limit, str(getattr(facts, limit))], 1)
        yield enforcement
        yield _gauge("seatable_sandbox_limits_mechanism", "1 for the mechanism that enforces the run limits here "
                     "(cgroup-v2, cgroup-v1-delegated or rlimit; /health says why not a better one).", 1,
                     {"mechanism": str(facts.mechanism)})
        identities = box.isolation.identities
        held, capacity = identities.held(), identities.capacity
        uids = GaugeMetricFamily("seatable_sandbox_runner_uids", "Host identities for runners (one per live "
                                 "runner), by state.", labels=["state"])
        uids.add_metric(["held"], held)
        uids.add_metric(["free"], max(0, capacity - held))
        yield uids

    @staticmethod
    def _network(box: Any) -> Iterator[Metric]:
        mode = box.config.network
        yield _gauge("seatable_sandbox_runner_network", "1 for the runners' network mode here (none, seatable: "
                     "through the egress proxy, open: internet yes, internal no).", 1, {"mode": str(mode)})
        proxy = box.egress.stats() if box.egress is not None else {}
        yield _counter("seatable_sandbox_egress_connections", "Connections runners asked the egress proxy for "
                       "(network mode seatable), by result.",
                       {k: proxy.get(k, 0) for k in ("allowed", "refused", "failed")}, "result")
        rules = box.network.stats() if box.network is not None else {}
        yield CounterMetricFamily("seatable_sandbox_network_refused_connections", "Connection attempts and "
                                  "datagrams the open network's rules refused (internal addresses, this host), "
                                  "read back after each run.", value=rules.get("refused", 0))
        yield CounterMetricFamily("seatable_sandbox_network_setup_failures", "Runners whose open-network rules "
                                  "could not be installed.", value=rules.get("failures", 0))

    @staticmethod
    def _pool(pool: Any) -> Iterator[Metric]:
        idle = pool.idle_count()
        yield _gauge("seatable_sandbox_warm_pool_idle", "Warm runners waiting for a job.", idle)
        yield _gauge("seatable_sandbox_warm_pool_target", "Warm runners the pool keeps (0 while memory is short).",
                     pool.target() if pool.size else 0)
        takes = CounterMetricFamily("seatable_sandbox_warm_pool_takes", "Runs that asked the pool for a runner: "
                                    "hit (got a warm one) or miss (cold start).", labels=["result"])
        takes.add_metric(["hit"], pool.served)
        takes.add_metric(["miss"], pool.misses)
        yield takes
        yield CounterMetricFamily("seatable_sandbox_warm_pool_failures", "Warm runners that failed to start.",
                                  value=pool.failures)
        yield CounterMetricFamily("seatable_sandbox_warm_pool_ended_before_ready", "Warm runners whose container "
                                  "ended before they were ready (e.g. their pre-imports met the memory limit).",
                                  value=pool.ended_before_ready)

    @staticmethod
    def _outbox(outbox: Any) -> Iterator[Metric]:
        yield _gauge("seatable_sandbox_outbox_pending", "Callbacks waiting for the scheduler's acknowledgement.",
                     outbox.pending())
        yield _gauge("seatable_sandbox_outbox_oldest_seconds", "Age of the oldest callback not yet acknowledged "
                     "(0: none).", outbox.oldest_pending_age() or 0.0)
        stats = outbox.stats
        yield _counter("seatable_sandbox_callbacks", "Callbacks to the scheduler by result (dropped: a running "
                       "callback refused; replaced: a result refused, sent again as a failure saying why).",
                       {"delivered": stats.delivered, "retried": stats.retried, "dropped": stats.dropped,
                        "replaced": stats.replaced}, "result")
        yield _counter("seatable_sandbox_callback_errors", "Failed callback attempts, by cause (http_403, "
                       "http_503, unreachable, ...).", dict(stats.causes), "cause")


