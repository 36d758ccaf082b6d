"""Deployment fixtures: `compose_host` is the sandbox user's rootless Podman, ready to build images (the runner
image is there); `stack_host` is the stack user's, where containers/compose.yaml runs (the runners' Podman runs
runners only). Tests using either are marked `compose` (and `podman`) by tests/conftest.py."""

from __future__ import annotations

import pytest

from sandbox.host import configured_user, lookup_user, socket_alive, start_api_service
from sandbox.stack_user import setup_stack_user
from tests.deployment.images import Podman
from tests.deployment.stack import rootless_networking, stack_user_name


@pytest.fixture(scope="session")
def compose_host() -> Podman:
    user = lookup_user(configured_user())
    if not socket_alive(user):
        start_api_service(user)
    rootless_networking()
    return Podman(user)


@pytest.fixture(scope="session")
def stack_host(compose_host: Podman) -> Podman:
    """The stack user as `seatable-sandbox host-setup --stack-user` makes it (idempotent: quick once made)."""
    return Podman(setup_stack_user(stack_user_name(), compose_host.user.name))
