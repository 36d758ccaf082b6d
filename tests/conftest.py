"""Shared fixtures and the test lanes.

Each support module is a pytest plugin owning one real service. A test's lane markers are derived from the
fixtures it uses (directly or through other fixtures), never placed by hand: a test that starts MariaDB is
`mariadb` because it asks for the server, so `./dev test --fast` (`-m "not podman and not mariadb and not
compose and not slow"`) can never start one by accident.
"""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.support.mariadb",
    "tests.support.databases",
    "tests.support.podman",
]

# fixture -> the markers of every test that uses it. The root fixtures of each real service are enough:
# item.fixturenames holds the whole closure (a test using `sandbox` also uses `sandbox_user`).
FIXTURE_MARKERS: dict[str, tuple[str, ...]] = {
    "mariadb_server": ("mariadb",),
    "sandbox_account": ("podman",),  # the sandbox user host-setup makes (./dev setup), and its rootless Podman
    "runner_image": ("podman",),
    "compose_host": ("compose", "podman"),  # tests/deployment/conftest.py: images and compose stacks
    # Real service processes (gunicorn schedulers, dispatchers): seconds each, so not in the fast lane.
    "serve": ("slow",),
    "dispatchers": ("slow",),
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = dict(callspec.params) if callspec is not None else {}
        for marker in sorted(lane_markers(list(getattr(item, "fixturenames", ())), params)):
            item.add_marker(marker)
