"""Faults of a cluster, one at a time under a counting load, as the chaos suite runs them on one host.

- a burst with the dispatchers writing through different Galera nodes (no fault: certification conflicts);
- a Galera node killed (SIGKILL) mid-burst and rejoined (the second dispatcher and API write through it);
- a sandbox host cut off from the network (its namespace's link down) for longer than every sweep window
  (hand-off window, time limit plus grace) and brought back: it must deliver, nothing ends as "sandbox lost";
- a dispatcher killed (SIGKILL) mid-burst and started again.
Every run must end exactly once (the script counts its executions), with its own output or a clear text.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.cluster.harness import Cluster, wait_until
from tests.cluster.load import ClusterLoad, ClusterRow

Step = Callable[[Cluster, float], None]
Inject = Callable[[Cluster, float], list[int]]  # returns the runs the fault met in flight
GALERA_VICTIM = 1  # node2: dispatcher d2 and API a2 write through it
CUT_HOST = 0
KILLED_DISPATCHER = 0


def _nothing(cluster: Cluster, hold: float) -> None:
    pass


def _none(cluster: Cluster, hold: float) -> list[int]:
    return []


def in_flight(cluster: Cluster, node: str | None = None) -> list[int]:
    """Runs handed to a sandbox host (to `node` only, when given) and not finished."""
    where = " AND sandbox_node = %s" if node else ""
    rows = cluster.try_query("SELECT id FROM script_log WHERE dispatched_at IS NOT NULL AND state <> 'finished'"
                             + where, (node,) if node else ())
    return [int(r[0]) for r in rows or []]


@dataclass(frozen=True)
class Fault:
    name: str
    hold: float  # seconds between inject and heal, full form
    quick_hold: float
    inject: Inject = _none
    heal: Step = _nothing
    burst: bool = False  # the big burst (Plan.burst runs) instead of Plan.runs


def _kill_galera_node(cluster: Cluster, hold: float) -> list[int]:
    assert cluster.galera is not None
    met = in_flight(cluster)
    cluster.galera.kill(GALERA_VICTIM)
    return met


def _rejoin_galera_node(cluster: Cluster, hold: float) -> None:
    assert cluster.galera is not None
    time.sleep(hold)
    cluster.galera.rejoin(GALERA_VICTIM)


def _cut_host(cluster: Cluster, hold: float) -> list[int]:
    """Once the host runs something, pull its cable."""
    url = cluster.hosts[CUT_HOST].url
    wait_until(lambda: bool((cluster.try_query("SELECT COUNT(*) FROM script_log WHERE sandbox_node = %s "
                                               "AND state = 'running'", (url,)) or [(0,)])[0][0]),
               120, f"a run on {url}")
    cluster.cut(CUT_HOST)
    return in_flight(cluster, url)


def _restore_host(cluster: Cluster, hold: float) -> None:
    time.sleep(hold)
    cluster.restore(CUT_HOST)


def _kill_dispatcher(cluster: Cluster, hold: float) -> list[int]:
    met = in_flight(cluster)
    cluster.kill_dispatcher(KILLED_DISPATCHER)
    time.sleep(hold)
    cluster.start_dispatcher(KILLED_DISPATCHER)
    return met


def cut_hold(cluster: Cluster) -> float:
    """Longer than every window the sweep has: the hand-off window and the time limit plus the grace."""
    t = cluster.topology
    return t.handoff_secs + t.process_timeout + t.lost_grace_secs + 3 * t.sweep_interval + 5


FAULTS = (
    Fault("burst, dispatchers on different Galera nodes", 0, 0, burst=True),
    Fault("Galera node killed mid-burst, rejoined", 10, 5, inject=_kill_galera_node, heal=_rejoin_galera_node),
    Fault("sandbox host cut off past the sweep windows, back", -1, -1, inject=_cut_host, heal=_restore_host),
    Fault("dispatcher SIGKILLed mid-burst, restarted", 3, 3, inject=_kill_dispatcher),
)


@dataclass(frozen=True)
class Plan:
    runs: int  # per fault
    burst: int  # the no-fault burst
    quick: bool
    settle_secs: float = 600.0
    script_sleep: float = 1.0
    count_left_each: bool = True  # stop the hosts gracefully after each fault to count runners left behind


def run_fault(cluster: Cluster, fault: Fault, plan: Plan, org_id: int) -> ClusterRow:
    hold = fault.quick_hold if plan.quick else fault.hold
    if hold < 0:
        hold = cut_hold(cluster)
    started = time.monotonic()
    load = ClusterLoad(cluster, fault.name, org_id)
    load.prepare()
    load.submit(plan.burst if fault.burst else plan.runs, sleep=0.0 if fault.burst else plan.script_sleep)
    load.wait_under_way(0.3, timeout=300)
    met = fault.inject(cluster, hold)
    fault.heal(cluster, hold)
    load.wait_finished(plan.settle_secs)
    left = count_left(cluster) if plan.count_left_each else 0
    row = load.tally(left, time.monotonic() - started)
    row.met = len(met)
    return row


def count_left(cluster: Cluster) -> int:
    """Stop every host gracefully (runs in hand end, warm runners are removed), count what is left, start again."""
    for host in cluster.hosts:
        cluster.stop_host(host.index, signal.SIGTERM)
    left = sum(len(cluster.containers(host.index)) for host in cluster.hosts)
    for host in cluster.hosts:
        cluster.remove_containers(host.index)
        cluster.start_host(host.index)
    return left
