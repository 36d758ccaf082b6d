"""A tightened copy of Podman's default seccomp profile for runners.

Podman's default allows unshare, mount, keyctl, ptrace and friends in rootless containers
(the user namespace is thought to be enough). Runners need none of them. The runner's
entrypoint stacks its own filter as well; this is the layer user code cannot skip even if
the entrypoint were bypassed, and the only one in an image without pyseccomp (upstream's
alpine runner): so it carries every denial of the entrypoint's filter, its list included,
and the same clone rule (no namespace flags).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from runner_rootfs.entrypoint import CLONE_NAMESPACE_FLAGS, DENIED_SYSCALLS

PODMAN_DEFAULT = Path("/usr/share/containers/seccomp.json")
DENIED = frozenset({
    "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount", "umount2", "pivot_root",
    "chroot", "unshare", "setns", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "fsopen", "fsmount",
    "fsconfig", "move_mount", "open_tree", "mount_setattr", "open_by_handle_at", "name_to_handle_at",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "personality",
    # Charged to the sandbox user (the user namespace's owner) whatever a runner's uid: one run could
    # take all of the service's inotify instances (fs.inotify.max_user_instances).
    "inotify_init", "inotify_init1",
}) | frozenset(DENIED_SYSCALLS)
EPERM, ENOSYS = 1, 38


# clone's flags are its first argument, but its second on s390 (as in Docker's default profile).
S390 = ["s390", "s390x"]


def tighten(profile: dict[str, Any]) -> dict[str, Any]:
    rules = []
    for rule in profile.get("syscalls", []):
        if rule.get("action") == "SCMP_ACT_ALLOW":
            names = [n for n in rule.get("names", []) if n not in DENIED and n not in ("clone", "clone3")]
            if not names:
                continue
            rule = {**rule, "names": names}
        rules.append(rule)
    rules.append({"names": sorted(DENIED), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM, "args": []})
    # ENOSYS, not EPERM: glibc then falls back to clone, whose flags the profile can check.
    rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS, "args": []})
    rules += clone_rules()
    return {**profile, "syscalls": rules}


def clone_rules() -> list[dict[str, Any]]:
    """clone without namespace flags is allowed; with any of them it fails with EPERM, as in the entrypoint's filter."""
    rules: list[dict[str, Any]] = []
    for index, arches in ((0, {"excludes": {"arches": S390}}), (1, {"includes": {"arches": S390}})):
        rules.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW", **arches, "args": [
            {"index": index, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]})
        for bit in range(CLONE_NAMESPACE_FLAGS.bit_length()):
            flag = 1 << bit
            if CLONE_NAMESPACE_FLAGS & flag:
                rules.append({"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM, **arches, "args": [
                    {"index": index, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}]})
    return rules


def write_profile(state_dir: Path, source: Path = PODMAN_DEFAULT) -> Path:
    """Write the tightened profile where the user's Podman service can read it."""
    profile = tighten(json.loads(source.read_text()))
    target = state_dir / "seccomp.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(profile))
    os.chmod(tmp, 0o644)
    tmp.replace(target)
    return target
