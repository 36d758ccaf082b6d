"""The quick form of the cluster's faults (`./dev cluster --faults` runs the full form): three Galera nodes,
three sandbox hosts in network namespaces, two dispatchers and two APIs, all real processes.

Target for every fault: no run executed twice, none stuck, none ended as "sandbox lost", no result lost,
every run finished with its own output or a clear failure text; no runner container left behind at the end.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.faults import FAULTS, Fault, Plan, count_left, run_fault
from tests.cluster.harness import Cluster, Topology
from tests.cluster.load import markdown

QUICK = Topology(slots=3, process_timeout=30, handoff_secs=10, lost_grace_secs=10, sweep_interval=2)
PLAN = Plan(runs=24, burst=150, quick=True, settle_secs=300, count_left_each=False)


@pytest.fixture(scope="module")
def cluster(runner_image: str) -> Iterator[Cluster]:
    harness = Cluster(QUICK, say=lambda _text: None,
                      extra_scheduler_env={"PYTHON_SCHEDULER_RATE_LIMIT_PERCENT": "1"})
    try:
        yield harness.start()
    finally:
        harness.stop()


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name.split(",")[0].split(" ")[0].lower())
def test_every_run_ends_exactly_once(cluster: Cluster, fault: Fault) -> None:
    row = run_fault(cluster, fault, PLAN, org_id=7000 + FAULTS.index(fault))
    print(markdown([row]))
    assert row.ok, f"{row.cells()}\n" + "\n".join(row.notes) + "\n" + cluster.logs()
    if not fault.burst:
        assert row.met > 0, "the fault met no run in flight"


def test_no_runner_is_left_behind(cluster: Cluster) -> None:
    assert count_left(cluster) == 0
