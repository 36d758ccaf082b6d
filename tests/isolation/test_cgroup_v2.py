"""The cgroup v2 path (issue 13, item 5): what can be checked on a cgroup v1 machine.

These hosts cannot boot cgroup v2, so: the Podman create options the driver generates for a v2 host,
the /health and host-setup report given a v2 `podman info`, the user@.service drop-in, and the operator's
script docs/check-cgroup-v2.sh, run here for real (on v1 it checks the delegated v1 cgroups instead).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from sandbox import systemd as sandbox_systemd
from sandbox.cgroups import runtime_wrapper
from sandbox.config import SandboxConfig
from sandbox.driver import ContainerDriver
from sandbox.identity import RUN_UID_FIRST, IdMapping, RunnerIdentities
from sandbox.isolation import enforcement_of
from sandbox.limits import CGROUP_V1_DELEGATED, CGROUP_V2, OOM_SCORE_IDLE, OOM_SCORE_SERVICES, RLIMIT, RunnerLimits
from sandbox.server import limits_report
from tests.support.podman import VENV_BIN
from tests.support.registry import with_defaults

REPO = Path(__file__).resolve().parents[2]
CHECK_SCRIPT = REPO / "docs" / "check-cgroup-v2.sh"


def podman_info_v2(controllers: list[str]) -> dict[str, Any]:
    """What `podman info` says for a rootless user on a cgroup v2 host with those controllers delegated."""
    return {"host": {
        "cgroupVersion": "v2", "cgroupControllers": controllers, "cgroupManager": "systemd",
        "ociRuntime": {"name": "crun", "path": "/usr/bin/crun"},
        "idMappings": {"uidmap": [{"container_id": 0, "host_id": 1001, "size": 1},
                                  {"container_id": 1, "host_id": 100000, "size": 65536}],
                       "gidmap": [{"container_id": 0, "host_id": 1001, "size": 1},
                                  {"container_id": 1, "host_id": 100000, "size": 65536}]},
    }}


def test_v2_with_delegation_is_reported_as_cgroup_v2() -> None:
    enforcement, mapping, _cgroups = enforcement_of(podman_info_v2(["cpu", "memory", "pids"]))
    assert (enforcement.mechanism, enforcement.memory, enforcement.pids, enforcement.cpu) == (
        CGROUP_V2, "cgroup", "cgroup", "cgroup")
    report = limits_report(enforcement, with_defaults(SandboxConfig, auth_token="a", scheduler_url="u"))
    assert report["mechanism"] == "cgroup-v2" and report["memory"] == "cgroup" and report["note"] == ""
    assert report["memory_bytes"] == 1 << 30 and report["pids_limit"] == 256
    assert (mapping.size, mapping.owner_uid, mapping.host_uid(RUN_UID_FIRST)) == (65536, 1001, 100000 + RUN_UID_FIRST)


def test_v2_without_delegation_falls_back_to_rlimits_and_says_why() -> None:
    enforcement, _mapping, _cgroups = enforcement_of(podman_info_v2(["cpu"]))
    assert (enforcement.mechanism, enforcement.memory, enforcement.pids) == (RLIMIT, "rlimit", "rlimit")
    assert "Delegate=memory pids cpu" in enforcement.note


def test_v2_create_options_ask_podman_for_every_limit(tmp_path: Path) -> None:
    enforcement, mapping, _cgroups = enforcement_of(podman_info_v2(["cpu", "memory", "pids"]))
    identities = RunnerIdentities(IdMapping(mapping.size, mapping.host_first, owner_uid=0), tmp_path, "node")
    limits = RunnerLimits(memory=256 << 20, pids=64, cpus=1.5, timeout=30, tmpfs_size=100 << 20)
    driver = ContainerDriver(api=None, image="img", limits=limits, enforcement=enforcement,  # type: ignore[arg-type]
                             node="node", output_limit=1000, identities=identities)
    uid = identities.claim()
    spec = driver.spec("7", uid=uid)
    assert spec["resource_limits"] == {"memory": {"limit": 256 << 20, "swap": 256 << 20},
                                       "pids": {"limit": 64}, "cpu": {"quota": 150_000, "period": 100_000}}
    assert spec["unified"] == {"memory.oom.group": "1"}  # one OOM kill ends the whole run
    assert spec["user"] == f"{uid}:{uid}" and uid >= RUN_UID_FIRST
    assert spec["userns"] == {"nsmode": "private"}
    assert spec["idmappings"]["UIDMap"] == [{"container_id": 0, "host_id": 1, "size": 65536}]
    assert spec["shm_size"] == 100 << 20 and spec["oom_score_adj"] == OOM_SCORE_IDLE
    assert "--address-space" not in spec["command"]  # RLIMIT_AS only where no memory cgroup exists
    assert spec["command"][spec["command"].index("--nproc") + 1] == "64"


def test_v1_without_cgroups_asks_podman_for_nothing_it_would_drop(tmp_path: Path) -> None:
    info = podman_info_v2([])
    info["host"].update(cgroupVersion="v1", cgroupControllers=[])
    enforcement, _mapping, _cgroups = enforcement_of(info)
    limits = RunnerLimits(memory=256 << 20, pids=64, cpus=0, timeout=30, tmpfs_size=100 << 20)
    assert enforcement.mechanism in (RLIMIT, CGROUP_V1_DELEGATED)
    assert limits.resource_limits(enforcement) == {} and limits.unified(enforcement) == {}


def test_the_user_manager_dropin_delegates_recreates_and_protects() -> None:
    dropin = sandbox_systemd.delegate_dropin(sandbox_systemd.Settings(user="sb", venv=Path("/srv/venv")))
    lines = dropin.splitlines()
    assert "[Service]" in lines
    assert "Delegate=memory pids cpu" in lines
    assert "ExecStartPre=+/srv/venv/bin/seatable-sandbox host-setup --cgroups-only --user sb" in lines
    assert f"OOMScoreAdjust={OOM_SCORE_SERVICES}" in lines
    committed = REPO / "systemd" / "user@.service.d" / sandbox_systemd.DELEGATE_DROPIN
    assert committed.read_text() == sandbox_systemd.delegate_dropin()


def test_the_runtime_wrapper_is_valid_sh_and_only_places_runner_creates() -> None:
    text = runtime_wrapper(1234, "/usr/bin/runc")
    assert subprocess.run(["sh", "-n"], input=text, text=True, check=False).returncode == 0
    assert "seatable-runners-1234/$id" in text and text.rstrip().endswith('exec /usr/bin/runc "$@"')


def test_the_operators_check_script_proves_the_limits_here(sandbox_user: Any) -> None:
    """Runs docs/check-cgroup-v2.sh for real against this host's sandbox user."""
    result = subprocess.run([str(CHECK_SCRIPT), "--user", sandbox_user.name, "--venv", str(VENV_BIN.parent)],
                            capture_output=True, text=True, timeout=600, check=False,
                            env={**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "out_of_memory" in result.stdout and "all limits held" in result.stdout
