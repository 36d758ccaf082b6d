"""Deployment fixtures: `compose_host` is the sandbox user's rootless Podman, ready to build images and run
compose stacks; tests using it are marked `compose` (and `podman`) by tests/conftest.py."""

from __future__ import annotations

import pytest

from sandbox.host import DEFAULT_USER, lookup_user, socket_alive, start_api_service
from tests.deployment.images import Podman
from tests.deployment.stack import rootless_networking


@pytest.fixture(scope="session")
def compose_host() -> Podman:
    user = lookup_user(DEFAULT_USER)
    if not socket_alive(user):
        start_api_service(user)
    rootless_networking()
    return Podman(user)
