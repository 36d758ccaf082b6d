"""The container monitor (conmon) of runners, without Podman's exit command.

When a container's process ends, conmon starts Podman's exit command: a new `podman container cleanup`
process (about 65 ms of CPU per run on a 2-core host, BENCHMARKS.md), at the very moment the run's result is
on its way. For a runner it does nothing the sandbox does not do anyway: the sandbox removes every runner it
starts through the API (removal cleans up first) once the result is delivered, and at start-up removes
what an earlier sandbox left. So the wrapper host-setup installs as containers.conf's `conmon_path` drops
the exit command for containers whose OCI config carries CLEANUP_ANNOTATION (every runner); conmon still
writes the exit file Podman reads the exit code from. Any other container of the user gets conmon unchanged.
"""

from __future__ import annotations

from pathlib import Path

from sandbox.cgroups import WRAPPER_DIR
from sandbox.userfiles import install_script

CLEANUP_ANNOTATION = "org.seatable.cleanup"  # "sandbox": the sandbox removes this container itself


def wrapper_path(user: str) -> Path:
    """Where host-setup puts the conmon wrapper of that sandbox user."""
    return WRAPPER_DIR / f"conmon-{user}"


def monitor_wrapper(conmon: str) -> str:
    """The wrapper's shell text: conmon's own arguments, less the exit command for a runner."""
    return f"""#!/bin/sh
# Written by seatable-sandbox host-setup: the container monitor of this user's rootless Podman.
# A runner (its OCI config annotated {CLEANUP_ANNOTATION}=sandbox) is monitored without Podman's exit
# command: the sandbox removes it itself, which cleans it up. Anything else goes to conmon unchanged.
bundle=; previous=
for arg in "$@"; do
    case "$previous" in --bundle|-b) bundle=$arg ;; esac
    case "$arg" in --bundle=*) bundle=${{arg#--bundle=}} ;; esac
    previous=$arg
done
if [ -n "$bundle" ] && grep -qF '"{CLEANUP_ANNOTATION}":"sandbox"' "$bundle/config.json" 2>/dev/null; then
    count=$#; skip=
    for arg in "$@"; do
        if [ -n "$skip" ]; then
            skip=
            continue
        fi
        case "$arg" in
            --exit-command|--exit-command-arg) skip=1 ;;
            --exit-command=*|--exit-command-arg=*) ;;
            *) set -- "$@" "$arg" ;;
        esac
    done
    shift "$count"
fi
exec {conmon} "$@"
"""


def install_wrapper(user: str, conmon: str) -> Path:
    """The conmon wrapper, root-owned, for containers.conf's conmon_path."""
    return install_script(wrapper_path(user), monitor_wrapper(conmon))
