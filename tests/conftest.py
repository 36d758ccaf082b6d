"""Shared fixtures: each support module is a pytest plugin owning one real service."""

pytest_plugins = [
    "tests.support.mariadb",
    "tests.support.podman",
    "tests.support.netlab",
]
