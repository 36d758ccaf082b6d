"""The culprit dies first under host memory pressure (issue 13, item 3).

No real host OOM: the kernel picks the task with the highest badness, which /proc/<pid>/oom_score
reports (a monotonic function of it). A run holding memory must come first, then other running runs,
then idle warm runners, and the services (sandbox, Podman service, conmon) last.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sandbox.host import SandboxUser, service_pids
from sandbox.limits import OOM_SCORE_IDLE, OOM_SCORE_RUNNING
from sandbox.podman_api import PodmanAPI
from tests.isolation.runners import HOLDING, MARK_HOLDING, live_runners
from tests.support.podman import CallbackReceiver

HOLDS_MEMORY = "data = b'x' * (400 << 20)\n" + MARK_HOLDING + "import time\ntime.sleep(6)\nprint(len(data) >> 20)\n"
INNOCENT = MARK_HOLDING + "import time\ntime.sleep(6)\nprint('innocent')\n"


def oom_score(pid: int) -> int:
    return int(Path(f"/proc/{pid}/oom_score").read_text())


def parent(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def test_the_run_holding_memory_has_the_highest_badness(sandbox_factory: Any, receiver: CallbackReceiver,
                                                         podman: PodmanAPI, sandbox_user: SandboxUser) -> None:
    sandbox = sandbox_factory(PYTHON_SANDBOX_WARM_POOL="3", PYTHON_SANDBOX_PREIMPORT="",
                              PYTHON_PROCESS_TIMEOUT="60")
    assert sandbox.run(601, HOLDS_MEMORY).status_code == 202
    assert sandbox.run(602, INNOCENT).status_code == 202
    deadline = time.monotonic() + 60
    while True:  # both runs hold what they want; the pool has refilled with idle runners
        runners = live_runners(podman, sandbox)
        running = [r for r in runners if r.oom_score_adj() == OOM_SCORE_RUNNING and r.comm() == HOLDING]
        idle = [r for r in runners if r.oom_score_adj() == OOM_SCORE_IDLE]
        if len(running) == 2 and idle:
            break
        assert time.monotonic() < deadline, [(r.pid, r.oom_score_adj(), r.comm()) for r in runners]
        time.sleep(0.1)
    culprit, innocent = sorted(running, key=lambda r: int(r.status("VmRSS").split()[0]), reverse=True)
    assert int(culprit.status("VmRSS").split()[0]) > 400 << 10  # KiB: it holds the 400 MiB
    services = {"sandbox": sandbox.worker_pid(), "conmon": parent(culprit.pid),
                **{f"podman service {pid}": pid for pid in service_pids(sandbox_user)}}
    scores = {"culprit": oom_score(culprit.job_pid), "innocent run": oom_score(innocent.job_pid),
              **{f"idle runner {r.pid}": oom_score(r.job_pid) for r in idle},
              **{name: oom_score(pid) for name, pid in services.items()}}
    print(scores)
    assert scores["culprit"] > scores["innocent run"], scores
    assert all(scores["innocent run"] > scores[f"idle runner {r.pid}"] for r in idle), scores
    assert all(scores[f"idle runner {r.pid}"] > scores[name] for r in idle for name in services), scores
    for name, pid in services.items():
        adj = int(Path(f"/proc/{pid}/oom_score_adj").read_text())
        assert adj <= 0, f"{name} has oom_score_adj {adj}"
    assert receiver.result(601)["output"] == "400\n"
    assert receiver.result(602)["output"] == "innocent\n"
