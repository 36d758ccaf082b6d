"""Shared fixtures and the test lanes.

Each support module is a pytest plugin owning one real service. A test's lane markers are derived from the
fixtures it uses (directly or through other fixtures), never placed by hand: a test that starts MariaDB is
`mariadb` because it asks for the server, so `./dev test --fast` (`-m "not podman and not mariadb and not
compose and not slow"`) can never start one by accident.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import workers

REPO = Path(__file__).resolve().parents[1]

pytest_plugins = [
    "tests.support.mariadb",
    "tests.support.databases",
    "tests.support.podman",
    "tests.support.netlab",
    "pytester",  # tests/unit/test_workers.py runs the suite's own hooks in a pytest of their own
]

# fixture -> the markers of every test that uses it. The root fixtures of each real service are enough:
# item.fixturenames holds the whole closure (a test using `sandbox` also uses `sandbox_user`).
FIXTURE_MARKERS: dict[str, tuple[str, ...]] = {
    "mariadb_server": ("mariadb",),
    "sandbox_account": ("podman",),  # the sandbox user host-setup makes (./dev setup), and its rootless Podman
    "runner_image": ("podman",),
    "throwaway_user": ("podman", "slow"),  # tests/isolation/test_planted_paths.py: host-setup for a user of its own
    "compose_host": ("compose", "podman"),  # tests/deployment/conftest.py: images and compose stacks
    "own_mariadb": ("mariadb",),  # tests/scheduler/test_health.py: a private server it stops and starts
    "chaos": ("mariadb", "podman", "slow"),  # tests/chaos: its own MariaDB, Podman service and processes
    "galera": ("mariadb", "slow"),  # tests/cluster: a three-node Galera cluster of its own
    "cluster": ("mariadb", "podman", "slow"),  # tests/cluster/test_faults.py: the whole cluster topology
    # Real service processes (gunicorn schedulers, dispatchers): seconds each, so not in the fast lane.
    "serve": ("slow",),
    "scheduler": ("slow",),  # tests/operators/test_openapi.py: a gunicorn scheduler of its own
    "dispatchers": ("slow",),
    # Network namespaces with servers in them (root, ip netns, seconds each): real hosts, not pure logic.
    "lan": ("slow",),  # tests/cluster/conftest.py: a LAN of namespaces
    "netlab": ("slow",),  # tests/support/netlab.py: the open-network lab
    "pytester": ("slow",),  # a whole pytest run (with xdist workers) in a subprocess
}
# (parametrized fixture, value) -> markers, for fixtures that pick their service by parameter.
PARAM_MARKERS: dict[tuple[str, str], tuple[str, ...]] = {
    ("backend", "mariadb"): ("mariadb",),
}

def lane_markers(fixturenames: list[str], params: dict[str, object]) -> set[str]:
    markers = {m for name in fixturenames for m in FIXTURE_MARKERS.get(name, ())}
    for (name, value), extra in PARAM_MARKERS.items():
        if params.get(name) == value:
            markers.update(extra)
    return markers


LANES = ("compose", "podman", "mariadb", "slow")


def lane_of(markers: set[str]) -> str:
    """The one lane a test's time is counted in: its heaviest service, or "fast" (what --fast runs)."""
    return next((lane for lane in LANES if lane in markers), "fast")


LANE_PROPERTY = "lane"


class LaneClock:
    """Where the suite's time goes, by lane: setup, call and teardown added up, each test in one lane.

    The lane travels in the report's user_properties, so with pytest-xdist the controller (which collects
    nothing itself) adds up every worker's reports.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.tests: dict[str, int] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        lane = str(dict(report.user_properties).get(LANE_PROPERTY, "fast"))  # set by lane_of, a str
        self.seconds[lane] = self.seconds.get(lane, 0.0) + report.duration
        if report.when == "call":
            self.tests[lane] = self.tests.get(lane, 0) + 1

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        parts = [f"{lane} {self.seconds[lane]:.0f} s ({self.tests.get(lane, 0)} tests)"
                 for lane in ("fast", *LANES) if lane in self.seconds]
        if parts:
            terminalreporter.write_line("lane times: " + ", ".join(parts))


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: the controller adds up its reports
        return
    config.pluginmanager.register(LaneClock(), "lane-clock")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(workers.WorkerGroups(), "worker-groups")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    markers_of: dict[str, set[str]] = {}
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = dict(callspec.params) if callspec is not None else {}
        markers = lane_markers(list(getattr(item, "fixturenames", ())), params)
        for marker in sorted(markers):
            item.add_marker(marker)
        markers_of[item.nodeid] = markers
        item.user_properties.append((LANE_PROPERTY, lane_of(markers)))
    workers.publish_groups(config, items, markers_of)


# --- no test writes a tracked file ------------------------------------------------------------------
# (benches write BENCHMARKS.md; a test may check a bench's output, never write the repository)

_TRACKED = pytest.StashKey[dict[str, str]]()


def tracked_files() -> dict[str, str]:
    """Path -> content hash of every file git tracks here; empty outside a git checkout."""
    try:
        listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True,
                                timeout=30).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return {}
    digests = {}
    for name in filter(None, listed.split("\0")):
        path = REPO / name
        if path.is_file():
            digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # once, in the controller: it outlives every worker
        session.config.stash[_TRACKED] = tracked_files()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_TRACKED, {})
    after = tracked_files() if before else {}
    changed = sorted(name for name, digest in before.items() if after.get(name) != digest)
    if changed:
        print(f"\ntests changed tracked files: {', '.join(changed)}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
