"""The suite in parallel (./dev test runs pytest-xdist with `--dist loadscope`): which tests share a worker.

Tests that share a service run in one worker, so it starts once per run: a module's tests together
(module-scoped sandboxes, receivers, pipelines), a package's when a package-scoped fixture serves them
(tests/cluster's Galera, tests/operators' pipeline), and every user of a fixture in SHARED_GROUPS. The scopes
are derived from the fixtures on the workers (which collect) and handed to the controller's scheduler in a
folder of its own, not through xdist_group marks: loadgroup smuggles the group in the node id, which pytest 9.2
no longer lets it change (pytest-xdist issue 1386), and the id stays as the test's own in every report.

Each group is named `<its heaviest marker>/<what it shares>`, and the scheduler hands out the heaviest groups
first, so a long one (image builds, the chaos harness, Galera) never starts last while the other workers idle.
Every worker has its own session fixtures (its own MariaDB server, sandboxes on their own ports and node names,
its own temp dirs), and the tests count only the containers of their own labels.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

# Heaviest first, by the time one test with each marker takes: compose builds images, podman boots sandboxes
# and runners, slow starts service processes (or a Galera cluster); "fast" is a test with no marker.
WEIGHT_ORDER = ("compose", "podman", "slow", "mariadb", "fast")

SHARED_GROUPS: dict[str, str] = {
    "compose_host": "deployment",  # the compose images, built once: two builds of one tag would race
}
FOLDER_KEY = "seatable_worker_groups"  # in each worker's workerinput: where it writes its nodeid -> group


def shared_scope(item: pytest.Item) -> str:
    """What the test shares with others: a SHARED_GROUPS name, its package, or its module."""
    names = getattr(item, "fixturenames", ())
    for fixture, group in SHARED_GROUPS.items():
        if fixture in names:
            return group
    module = item.nodeid.split("::", 1)[0]
    info = getattr(item, "_fixtureinfo", None)
    for definitions in info.name2fixturedefs.values() if info is not None else ():
        if definitions and definitions[-1].scope == "package":
            return definitions[-1].baseid or module
    return module


def heaviest(markers: set[str]) -> str:
    return next((weight for weight in WEIGHT_ORDER if weight in markers), "fast")


def groups_of(items: list[pytest.Item], markers: dict[str, set[str]]) -> dict[str, str]:
    """nodeid -> `<heaviest marker of its group>/<shared scope>` (`markers`: nodeid -> its lane markers)."""
    scopes = {item.nodeid: shared_scope(item) for item in items}
    weight: dict[str, str] = {}
    for nodeid, scope in scopes.items():
        weight[scope] = heaviest({weight.get(scope, "fast"), heaviest(markers[nodeid])})
    return {nodeid: f"{weight[scope]}/{scope}" for nodeid, scope in scopes.items()}


def publish_groups(config: pytest.Config, items: list[pytest.Item], markers: dict[str, set[str]]) -> None:
    """On an xdist worker: write the groups where the controller's scheduler reads them; elsewhere nothing."""
    workerinput = getattr(config, "workerinput", {})
    if FOLDER_KEY in workerinput:
        path = Path(workerinput[FOLDER_KEY]) / f"{workerinput['workerid']}.json"
        path.write_text(json.dumps(groups_of(items, markers)))


def rank(group: str, tests: int) -> tuple[int, int]:
    """The order groups are handed out in: heaviest marker first, then the group with more tests."""
    weight = group.split("/", 1)[0]
    return (WEIGHT_ORDER.index(weight) if weight in WEIGHT_ORDER else len(WEIGHT_ORDER), -tests)


class HeaviestFirstScheduling(LoadScopeScheduling):
    """xdist's loadscope scheduling over the workers' groups; the next group a worker gets is the heaviest left."""

    def __init__(self, config: pytest.Config, log: Any, folder: Path) -> None:
        super().__init__(config, log)
        self.folder = folder
        self.groups: dict[str, str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self.groups is None:  # every worker has collected by now (scheduling starts after the last one)
            self.groups = {}
            for path in sorted(self.folder.glob("*.json")):
                self.groups.update(json.loads(path.read_text()))
        return self.groups.get(nodeid) or super()._split_scope(nodeid)

    def _assign_work_unit(self, node: Any) -> None:
        first = min(self.workqueue, key=lambda group: rank(group, len(self.workqueue[group])))
        self.workqueue.move_to_end(first, last=False)
        super()._assign_work_unit(node)


class WorkerGroups:
    """The controller's side (a pytest plugin where xdist is loaded): a folder for the workers' groups, and
    HeaviestFirstScheduling for `--dist loadscope`."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="pytest-worker-groups-"))

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[FOLDER_KEY] = str(self.folder)

    @pytest.hookimpl(tryfirst=True)  # before xdist's own, which answers every --dist mode
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getvalue("dist") != "loadscope":
            return None
        return HeaviestFirstScheduling(config, log, self.folder)

    def pytest_unconfigure(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
