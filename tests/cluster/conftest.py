"""Cluster fixtures: a Galera cluster shared by this package's tests, a LAN of namespaces per test.

Both are removed after the test or module, also when it failed; a harness run that was killed outright is
cleaned up by the next one (`reap_stale` in tests/support/galera.py and netns.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.galera import GaleraCluster
from tests.support.netns import LAN


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
