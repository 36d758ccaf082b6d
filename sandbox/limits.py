"""Which limits the kernel enforces for runners on this host, and how to ask for them.

Rootless Podman can apply cgroup limits only where the host delegates the controllers to
the sandbox user (cgroup v2). Elsewhere (cgroup v1, hybrid) Podman drops them with a
warning, so the entrypoint sets rlimits instead: RLIMIT_AS for memory (coarse: virtual
reservations count) and RLIMIT_NPROC for processes (per uid, shared by all runners of the
host, because rootless containers share one user namespace).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

NOFILE = 1024
CPU_PERIOD = 100_000


@dataclass(frozen=True)
class Enforcement:
    memory: str  # "cgroup" or "rlimit"
    pids: str  # "cgroup" or "rlimit"
    cpu: str  # "cgroup" or "none"
    cgroup_version: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def detect(podman_info: dict[str, Any]) -> Enforcement:
    host = podman_info.get("host", {})
    version = str(host.get("cgroupVersion", "v1"))
    controllers = set(host.get("cgroupControllers") or [])
    cgroup = version == "v2"
    return Enforcement(
        memory="cgroup" if cgroup and "memory" in controllers else "rlimit",
        pids="cgroup" if cgroup and "pids" in controllers else "rlimit",
        cpu="cgroup" if cgroup and "cpu" in controllers else "none",
        cgroup_version=version,
    )


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
        """libpod's resource_limits for the limits cgroups enforce here."""
        limits: dict[str, Any] = {}
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
                "--cpu-seconds", str(self.cpu_seconds)]
        if enforcement.memory == "rlimit":
            args += ["--address-space", str(self.memory)]
        if enforcement.pids == "rlimit":
            args += ["--nproc", str(self.pids)]
        return args

    def r_limits(self) -> list[dict[str, Any]]:
        # Explicit and below the host's hard limits, or runc fails to start rootful containers.
        return [{"type": "nofile", "soft": NOFILE, "hard": NOFILE}]


def human_size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"
