"""Cluster fixtures: a Galera cluster shared by this package's tests, a LAN of namespaces per test.

Both are removed after the test or module, also when it failed; a harness run that was killed outright is
cleaned up by the next one (`reap_stale` in tests/support/galera.py and netns.py).

The quick form of the faults (test_faults.py, about ten minutes here) runs only when the command line names
this folder or a file in it (`./dev test tests/cluster`); the Galera tests (two minutes) run in every suite.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.galera import GaleraCluster
from tests.support.netns import LAN

HERE = Path(__file__).parent
ON_REQUEST = {HERE / "test_faults.py"}


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path not in ON_REQUEST:
        return None
    named = (config.invocation_params.dir / arg.split("::")[0] for arg in config.args)
    return not any(path.resolve() == HERE or HERE in path.resolve().parents for path in named)


@pytest.fixture(scope="package")
def galera() -> Iterator[GaleraCluster]:
    cluster = GaleraCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def lan() -> Iterator[LAN]:
    network = LAN().create()
    try:
        yield network
    finally:
        network.remove()
