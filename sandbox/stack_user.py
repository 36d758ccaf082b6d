"""The compose stack's own user: MariaDB, the scheduler and the dispatcher run in ITS rootless Podman.

The sandbox holds its user's Podman API socket, and whoever holds that socket controls every container that Podman
runs (exec, stop, copy files out). So that Podman must run runners only: a compromised sandbox must not reach the
database or the scheduler. The stack gets another unprivileged user with a rootless Podman of its own, whose
socket nothing mounts; the sandbox user cannot enter its home or runtime directory (both 0700).
"""

from __future__ import annotations

import os
import subprocess

from sandbox.errors import SetupError
from sandbox.host import (
    SandboxUser,
    choose_runtime,
    ensure_user,
    has_systemd,
    podman_info,
    reset_storage_if_needed,
    write_podman_config,
)

DEFAULT_STACK_USER = "seatable-stack"


def check_stack_user(name: str, sandbox_user: str) -> None:
    """Refuse a stack user that would put the stack back into the runners' Podman, or run it as root."""
    if name in ("root", "0"):
        raise SetupError("the compose stack must run as an unprivileged user, not root")
    if name == sandbox_user:
        raise SetupError(f"--stack-user {name} is the sandbox user: the stack needs a Podman the sandbox does not "
                         "control (another user)")


def setup_stack_user(name: str, sandbox_user: str) -> SandboxUser:
    """Create (or keep) the stack user with its subordinate ids and its own Podman configuration; idempotent."""
    check_stack_user(name, sandbox_user)
    user = ensure_user(name, comment="SeaTable Python pipeline stack (compose)")
    if os.geteuid() != 0:
        return user
    # The same engine settings as the runners' Podman (the runtime that works on this host, overlay storage),
    # without the runners' cgroup wrapper: nothing of the stack is a runner.
    changed = write_podman_config(user, choose_runtime())
    reset_storage_if_needed(user, changed.storage)
    if has_systemd():
        # Its containers keep running without a login session; podman-restart.service starts them at boot.
        subprocess.run(["loginctl", "enable-linger", user.name], check=False, capture_output=True)
    podman_info(user)  # fails with one line when this user's Podman does not work
    return user
