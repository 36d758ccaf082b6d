"""Entrypoint of the sandbox container: make the runners' seccomp profile, egress sockets and trusted entrypoint
reachable by the HOST's Podman.

The sandbox hands Podman a *path* to the seccomp profile, and Podman (on the host, outside this container)
opens it. A path inside this container means nothing there. The state directory is a named volume, and a
named volume of the same rootless Podman is a directory on the host: ask Podman (through the one socket
we have) where our own state volume lives, copy the profile into it, and pass the host-side paths on. The
per-run egress sockets are made under the same volume, so Podman can bind-mount them into runners, and so is a
copy of the runner's trusted entrypoint and egress relay (mounted read-only into every runner).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import sys

from podman import PodmanClient

PROFILE = "/usr/share/seatable-sandbox/seccomp.json"
RUNNER_FILES = ("entrypoint.py", "egress_forward.py")


def host_path_of(state_dir: str, podman_url: str) -> str:
    """The host directory behind the mount at `state_dir`, from our own container's inspect data."""
    with PodmanClient(base_url=podman_url) as client:
        me = client.containers.get(socket.gethostname())
        for mount in me.attrs.get("Mounts", []):
            if mount.get("Destination") == state_dir and mount.get("Source"):
                return str(mount["Source"])
    raise SystemExit(f"sandbox entrypoint: {state_dir} is not a volume of this container; "
                     "mount a named volume there (compose.yaml does)")


def copy_runner_files(target: str) -> None:
    """The installed package's entrypoint and relay, replaced whole (a runner may hold the old ones open)."""
    spec = importlib.util.find_spec("runner_rootfs.entrypoint")
    if spec is None or spec.origin is None:
        raise SystemExit("sandbox entrypoint: the runner_rootfs package is not installed")
    source = os.path.dirname(spec.origin)
    os.makedirs(target, mode=0o755, exist_ok=True)
    os.chmod(target, 0o755)  # noqa: S103 (the runners, other uids, read the entrypoint from here)
    for name in RUNNER_FILES:
        shutil.copyfile(os.path.join(source, name), os.path.join(target, name + ".tmp"))
        os.chmod(os.path.join(target, name + ".tmp"), 0o644)
        os.replace(os.path.join(target, name + ".tmp"), os.path.join(target, name))


def main(argv: list[str]) -> None:
    state_dir = os.environ.get("PYTHON_SANDBOX_STATE_DIR", "/var/lib/seatable-sandbox/state")
    host_dir = ""
    if not all(os.environ.get(name) for name in ("PYTHON_SANDBOX_SECCOMP_PROFILE", "PYTHON_SANDBOX_EGRESS_HOST_DIR",
                                                 "PYTHON_SANDBOX_RUNNER_FILES")):
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
    if not os.environ.get("PYTHON_SANDBOX_RUNNER_FILES"):
        copy_runner_files(os.path.join(state_dir, "runner-files"))
        os.environ["PYTHON_SANDBOX_RUNNER_FILES"] = os.path.join(host_dir, "runner-files")
    os.execvp("seatable-sandbox", ["seatable-sandbox", *argv])  # noqa: S606 (replaces this process, no shell)


if __name__ == "__main__":
    main(sys.argv[1:] or ["serve"])
