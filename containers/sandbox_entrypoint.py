"""Entrypoint of the sandbox container: make the runners' seccomp profile and egress sockets reachable by
the HOST's Podman.

The sandbox hands Podman a *path* to the seccomp profile, and Podman (on the host, outside this container)
opens it. A path inside this container means nothing there. The state directory is a named volume, and a
named volume of the same rootless Podman is a directory on the host: ask Podman (through the one socket
we have) where our own state volume lives, copy the profile into it, and pass the host-side paths on. The
per-run egress sockets are made under the same volume, so Podman can bind-mount them into runners.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys

from podman import PodmanClient

PROFILE = "/usr/share/seatable-sandbox/seccomp.json"


def host_path_of(state_dir: str, podman_url: str) -> str:
    """The host directory behind the mount at `state_dir`, from our own container's inspect data."""
    with PodmanClient(base_url=podman_url) as client:
        me = client.containers.get(socket.gethostname())
        for mount in me.attrs.get("Mounts", []):
            if mount.get("Destination") == state_dir and mount.get("Source"):
                return str(mount["Source"])
    raise SystemExit(f"sandbox entrypoint: {state_dir} is not a volume of this container; "
                     "mount a named volume there (compose.yaml does)")


def main(argv: list[str]) -> None:
    state_dir = os.environ.get("PYTHON_SANDBOX_STATE_DIR", "/var/lib/seatable-sandbox/state")
    host_dir = ""
    if not os.environ.get("PYTHON_SANDBOX_SECCOMP_PROFILE") or not os.environ.get("PYTHON_SANDBOX_EGRESS_HOST_DIR"):
        host_dir = host_path_of(state_dir, os.environ["PYTHON_SANDBOX_PODMAN_URL"])
    if not os.environ.get("PYTHON_SANDBOX_EGRESS_HOST_DIR"):
        os.environ["PYTHON_SANDBOX_EGRESS_DIR"] = os.path.join(state_dir, "egress")
        os.environ["PYTHON_SANDBOX_EGRESS_HOST_DIR"] = os.path.join(host_dir, "egress")
    if not os.environ.get("PYTHON_SANDBOX_SECCOMP_PROFILE"):
        target = os.path.join(state_dir, "seccomp.json")
        shutil.copyfile(PROFILE, target + ".tmp")
        os.chmod(target + ".tmp", 0o644)
        os.replace(target + ".tmp", target)
        os.environ["PYTHON_SANDBOX_SECCOMP_PROFILE"] = os.path.join(host_dir, "seccomp.json")
    os.execvp("seatable-sandbox", ["seatable-sandbox", *argv])  # noqa: S606 (replaces this process, no shell)


if __name__ == "__main__":
    main(sys.argv[1:] or ["serve"])
