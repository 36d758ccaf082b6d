"""Which limits the kernel enforces for runners on this host, and how to ask for them.

Three mechanisms, best first (`/health` and host-setup name the one in force):
- cgroup-v2: the host delegates memory and pids (and cpu) to the sandbox user; rootless Podman
  applies the limits itself (resource_limits), with memory.oom.group so an OOM ends the whole run.
- cgroup-v1-delegated: cgroup v1 or hybrid, where Podman drops the limits; root delegated a
  subtree at host-setup and the sandbox places each runner in cgroups of its own (sandbox.cgroups).
- rlimit: neither; the entrypoint sets RLIMIT_AS for memory (coarse: virtual reservations count,
  and memfd, shared memory and tmpfs do not).
In every mode RLIMIT_NPROC is set as well: each live run has a host uid of its own
(sandbox.identity), so it is a per-run budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

NOFILE = 1024
CPU_PERIOD = 100_000
# Per-user kernel budgets that the kernel also charges to the sandbox user (the owner of the user
# namespace): each run gets a small share, so no run can use up the others' or the service's.
SIGPENDING = 1024
MSGQUEUE = 0  # no POSIX message queues in runners
CGROUP_V2, CGROUP_V1_DELEGATED, RLIMIT = "cgroup-v2", "cgroup-v1-delegated", "rlimit"
# oom_score_adj: under host memory pressure the kernel kills the running run holding the most
# memory first, then idle warm runners (cheap to replace), and the services last.
OOM_SCORE_RUNNING = 1000  # the entrypoint raises itself to this when its job arrives
OOM_SCORE_IDLE = 500
OOM_SCORE_SERVICES = -900  # set by root (host-setup, systemd) for the Podman service and the sandbox


@dataclass(frozen=True)
class Enforcement:
    memory: str  # "cgroup" or "rlimit"
    pids: str  # "cgroup" or "rlimit"
    cpu: str  # "cgroup" or "none"
    cgroup_version: str
    mechanism: str = RLIMIT  # cgroup-v2, cgroup-v1-delegated or rlimit
    note: str = ""  # why not a better mechanism

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def detect(podman_info: dict[str, Any], delegated: list[str] | None = None, wrapper_active: bool = False,
           why_not_delegated: str = "") -> Enforcement:
    """What this host enforces: cgroup v2 through Podman, a delegated v1 subtree, or rlimits.

    `delegated`: the v1 controllers this user owns a subtree of; `wrapper_active`: Podman runs the
    runtime wrapper that places runners there (both from sandbox.cgroups)."""
    host = podman_info.get("host", {})
    version = str(host.get("cgroupVersion", "v1"))
    controllers = set(host.get("cgroupControllers") or [])
    if version == "v2":
        v2 = "memory" in controllers and "pids" in controllers
        return Enforcement(
            memory="cgroup" if "memory" in controllers else "rlimit",
            pids="cgroup" if "pids" in controllers else "rlimit",
            cpu="cgroup" if "cpu" in controllers else "none",
            cgroup_version=version,
            mechanism=CGROUP_V2 if v2 else RLIMIT,
            note="" if v2 else "cgroup v2 without memory and pids delegated: add Delegate=memory pids cpu "
                               "to user@.service (docs/deployment.md)",
        )
    owned = set(delegated or [])
    if {"memory", "pids"} <= owned and wrapper_active:
        return Enforcement(memory="cgroup", pids="cgroup", cpu="cgroup" if "cpu" in owned else "none",
                           cgroup_version=version, mechanism=CGROUP_V1_DELEGATED)
    if {"memory", "pids"} <= owned:
        why_not_delegated = ("the Podman service does not run the runtime wrapper that places runners in "
                             "their cgroups; restart it after host-setup")
    return Enforcement(memory="rlimit", pids="rlimit", cpu="none", cgroup_version=version, mechanism=RLIMIT,
                       note=why_not_delegated)


@dataclass(frozen=True)
class RunnerLimits:
    memory: int
    pids: int
    cpus: float
    timeout: int
    tmpfs_size: int

    @property
    def cpu_seconds(self) -> int:
        """RLIMIT_CPU of the script's process: past the time limit, so it only stops what wall time cannot."""
        return self.timeout + 5

    def resource_limits(self, enforcement: Enforcement) -> dict[str, Any]:
        """libpod's resource_limits: what Podman itself enforces (cgroup v2 only)."""
        limits: dict[str, Any] = {}
        if enforcement.cgroup_version != "v2":
            return limits  # v1: Podman would drop them; delegated v1 cgroups are the sandbox's own
        if enforcement.memory == "cgroup":
            limits["memory"] = {"limit": self.memory, "swap": self.memory}
        if enforcement.pids == "cgroup":
            limits["pids"] = {"limit": self.pids}
        if enforcement.cpu == "cgroup" and self.cpus > 0:
            limits["cpu"] = {"quota": int(self.cpus * CPU_PERIOD), "period": CPU_PERIOD}
        return limits

    def entrypoint_args(self, enforcement: Enforcement) -> list[str]:
        """rlimits the trusted entrypoint sets before any user code."""
        args = ["--nofile", str(NOFILE), "--fsize", str(self.tmpfs_size),
                "--cpu-seconds", str(self.cpu_seconds),
                # Per run, since each run has a host uid of its own; a second bound where cgroups count pids.
                "--nproc", str(self.pids),
                "--sigpending", str(SIGPENDING), "--msgqueue", str(MSGQUEUE),
                "--running-oom-score", str(OOM_SCORE_RUNNING)]
        if enforcement.memory == "rlimit":
            args += ["--address-space", str(self.memory)]
        return args

    def unified(self, enforcement: Enforcement) -> dict[str, str]:
        """libpod's `unified` (cgroup v2 files): an OOM kill ends every process of the run."""
        by_podman = enforcement.cgroup_version == "v2" and enforcement.memory == "cgroup"
        return {"memory.oom.group": "1"} if by_podman else {}

    def r_limits(self) -> list[dict[str, Any]]:
        # Explicit and below the host's hard limits, or runc fails to start rootful containers.
        return [{"type": "nofile", "soft": NOFILE, "hard": NOFILE}]


def human_size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"
