"""Deployment tests: the `compose` marker selects the slow podman-compose stack (`pytest -m compose`)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "compose: builds the images and runs containers/compose.yaml offline (slow)")
