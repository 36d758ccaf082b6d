"""What keeps runs apart on this host: the limit mechanism, runner identities and per-run cgroups.

One probe of the sandbox user's Podman (`podman info`) decides all three, so the sandbox, run-local,
the tests and the benchmarks start runners the same way.
"""

from __future__ import annotations

import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.cgroups import RunCgroups, wrapper_path
from sandbox.identity import IdMapping, RunnerIdentities, claim_dir
from sandbox.limits import CGROUP_V1_DELEGATED, Enforcement, detect


@dataclass
class Isolation:
    enforcement: Enforcement
    identities: RunnerIdentities
    cgroups: RunCgroups | None  # the sandbox's own per-run cgroups (cgroup-v1-delegated only)

    def health(self) -> dict[str, Any]:
        mapping = self.identities.mapping
        return {
            "mechanism": self.enforcement.mechanism,
            "runner_uids": {"first": mapping.run_uids.start, "capacity": self.identities.capacity,
                            "held": self.identities.held(),
                            "host_first": mapping.host_uid(mapping.run_uids.start)},
            "cgroup_subtree": self.cgroups.subtree if self.cgroups is not None else "",
            "note": self.enforcement.note,
        }


def enforcement_of(info: dict[str, Any]) -> tuple[Enforcement, IdMapping, RunCgroups]:
    """The limit mechanism, the id mapping and the v1 subtree of the user whose `podman info` this is."""
    mapping = IdMapping.from_podman_info(info)
    cgroups = RunCgroups(mapping.owner_uid)
    runtime = (info.get("host") or {}).get("ociRuntime") or {}
    try:
        user = pwd.getpwuid(mapping.owner_uid).pw_name
    except KeyError:
        user = ""  # a sandbox in a container: its Podman user is not in this passwd
    wrapper_active = bool(user) and runtime.get("path") == str(wrapper_path(user))
    return detect(info, cgroups.controllers(), wrapper_active, cgroups.unusable()), mapping, cgroups


def probe(info: dict[str, Any], owner: str, state_dir: Path) -> Isolation:
    """From the sandbox user's `podman info`; `owner` names this process's runner uid claims (the node),
    kept in the user's runtime directory (or below `state_dir` where that is not visible)."""
    enforcement, mapping, cgroups = enforcement_of(info)
    identities = RunnerIdentities(mapping, claim_dir(mapping.owner_uid, state_dir), owner)
    return Isolation(enforcement, identities, cgroups if enforcement.mechanism == CGROUP_V1_DELEGATED else None)
