"""What the isolation tests look at from the host: a sandbox's live runners, their processes and cgroups."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sandbox.driver import LABEL, LABEL_UID
from sandbox.podman_api import PodmanAPI
from tests.support.podman import SandboxProcess


@dataclass(frozen=True)
class LiveRunner:
    container: str
    pid: int  # the runner's first process (the entrypoint, pid 1 inside), as the host sees it
    container_uid: int

    @property
    def job_pid(self) -> int:
        """The process that reads the job and runs the script: pid 1's child (pid 1 only reaps and reports)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return int(children[0]) if children else self.pid

    def status(self, field: str) -> str:
        pid = self.job_pid
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
        raise AssertionError(f"no {field} in /proc/{pid}/status")

    @property
    def host_uid(self) -> int:
        return int(self.status("Uid").split()[0])

    def comm(self) -> str:
        return Path(f"/proc/{self.job_pid}/comm").read_text().strip()

    def oom_score(self) -> int:
        return int(Path(f"/proc/{self.job_pid}/oom_score").read_text())

    def oom_score_adj(self) -> int:
        return int(Path(f"/proc/{self.job_pid}/oom_score_adj").read_text())

    def cgroup(self, controller: str) -> str:
        for line in Path(f"/proc/{self.job_pid}/cgroup").read_text().splitlines():
            if line.split(":")[1] == controller:
                return line.split(":", 2)[2]
        raise AssertionError(f"no {controller} cgroup for {self.pid}")


def live_runners(podman: PodmanAPI, sandbox: SandboxProcess) -> list[LiveRunner]:
    node = sandbox.env["PYTHON_SANDBOX_NODE_NAME"]
    found = []
    for entry in podman.labelled(f"{LABEL}={node}"):
        state = podman.inspect(entry["Id"])
        if state["State"]["Running"] and state["State"]["Pid"]:
            found.append(LiveRunner(entry["Id"], state["State"]["Pid"], int(entry["Labels"][LABEL_UID])))
    return found


def wait_for_runners(podman: PodmanAPI, sandbox: SandboxProcess, count: int, timeout: float = 60,
                     ) -> list[LiveRunner]:
    deadline = time.monotonic() + timeout
    while len(runners := live_runners(podman, sandbox)) < count:
        assert time.monotonic() < deadline, f"{len(runners)} of {count} runners live"
        time.sleep(0.1)
    return runners


# A script marks the moment it holds what it grabbed by renaming its process; the host sees that in
# /proc/<pid>/comm without waiting for the run's output, which arrives only at its end.
HOLDING = "holding"
MARK_HOLDING = (
    "import ctypes\n"
    f"ctypes.CDLL(None).prctl(15, b'{HOLDING}')  # PR_SET_NAME\n"
)


def wait_until_holding(runner: LiveRunner, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while runner.comm() != HOLDING:
        assert time.monotonic() < deadline, f"runner {runner.container[:12]} never got to hold anything"
        time.sleep(0.05)
