"""The suite in parallel (tests/support/workers.py): tests that share a service stay in one worker, the heaviest
groups go first, and the lane clock and --durations add up every worker's reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.workers import rank

REPO = Path(__file__).resolve().parents[2]

RECORD = '''
import os
from pathlib import Path


def record(name: str) -> None:
    with open(os.environ["WORKERS_RECORD"], "a") as out:
        out.write(f"{name} {os.environ['PYTEST_XDIST_WORKER']}\\n")
'''

SUITE = {
    "conftest.py": "from tests.conftest import *  # noqa: F403 (the suite's own lane and worker hooks)\n",
    "record.py": RECORD,
    # A module-scoped fixture: the module's tests share it, so they share a worker.
    "test_module.py": '''
import pytest
from record import record


@pytest.fixture(scope="module")
def service() -> str:
    return "started once"


@pytest.mark.parametrize("n", range(4))
def test_uses_the_module_service(service: str, n: int) -> None:
    record("module")
''',
    # A package-scoped fixture: every module of the package shares one worker.
    "pkg/__init__.py": "",
    "pkg/conftest.py": '''
import pytest


@pytest.fixture(scope="package")
def hosts() -> str:
    return "started once"
''',
    "pkg/test_one.py": '''
from record import record


def test_one(hosts: str) -> None:
    record("package")


def test_two(hosts: str) -> None:
    record("package")
''',
    "pkg/test_other.py": '''
from record import record


def test_other(hosts: str) -> None:
    record("package")
''',
    "test_loose.py": '''
from record import record


def test_a() -> None:
    record("loose")


def test_b() -> None:
    record("loose")
''',
}


def test_shared_services_stay_in_one_worker_and_the_lane_clock_adds_up_all_workers(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, text in SUITE.items():
        (pytester.path / name).parent.mkdir(parents=True, exist_ok=True)
        (pytester.path / name).write_text(text)
    record = pytester.path / "record.txt"
    monkeypatch.setenv("WORKERS_RECORD", str(record))
    monkeypatch.setenv("PYTHONPATH", f"{pytester.path}:{REPO}")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--dist", "loadscope",
                                           "--durations=3", "--durations-min=0", "-q", timeout=180)
    output = result.stdout.str()
    assert result.ret == 0, output + result.stderr.str()
    assert "9 passed" in output
    workers: dict[str, set[str]] = {}
    for line in record.read_text().splitlines():
        name, worker = line.split()
        workers.setdefault(name, set()).add(worker)
    assert {name: len(seen) for name, seen in workers.items()} == {"module": 1, "package": 1, "loose": 1}
    assert "lane times: fast " in output and "(9 tests)" in output  # every worker's reports
    assert "slowest 3 durations" in output


def test_the_heaviest_groups_are_handed_out_first() -> None:
    groups = {"fast/a.py": 40, "mariadb/b.py": 200, "podman/c.py": 3, "compose/deployment": 9, "podman/d.py": 12,
              "slow/e.py": 5, "tests/f.py::Class": 1}
    order = sorted(groups, key=lambda group: rank(group, groups[group]))
    assert order == ["compose/deployment", "podman/d.py", "podman/c.py", "slow/e.py", "mariadb/b.py", "fast/a.py",
                     "tests/f.py::Class"]

