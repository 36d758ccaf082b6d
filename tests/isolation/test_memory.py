"""A memory bound per run that counts everything the run holds (issue 13, item 2).

Each attack script tries to hold three times the run's limit in a way RLIMIT_AS does not see (memfd,
SysV and POSIX shared memory, tmpfs files, many processes, one process growing into what a killed
sibling held). The run must end as "out of memory" within seconds, the script must never have held
more than the limit, and the memory charged to the run (sampled from outside, while it runs) must
stay within the limit.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sandbox import texts
from sandbox.cgroups import RunCgroups, subtree_name
from sandbox.host import SandboxUser
from sandbox.limits import CGROUP_V1_DELEGATED, CGROUP_V2
from sandbox.podman_api import PodmanAPI
from tests.isolation.runners import LiveRunner, live_runners, wait_for_runners, wait_until_holding
from tests.support.podman import CallbackReceiver, SandboxProcess

LIMIT_MIB = 256
STEP_MIB = 16
STEPS = 3 * LIMIT_MIB // STEP_MIB  # three times the limit

MEMFD = f"""\
import os
fd = os.memfd_create('hog')
for step in range(1, {STEPS} + 1):
    os.write(fd, b'x' * ({STEP_MIB} << 20))
    print('held', step * {STEP_MIB}, flush=True)
"""

SYSV_SHM = f"""\
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
for step in range(1, {STEPS} + 1):
    segment = libc.shmget(0, {STEP_MIB} << 20, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
    address = libc.shmat(segment, None, 0)
    ctypes.memset(address, 1, {STEP_MIB} << 20)
    libc.shmdt(ctypes.c_void_p(address))  # detached: held by the IPC namespace, by no process
    print('held', step * {STEP_MIB}, flush=True)
"""

POSIX_SHM = f"""\
from multiprocessing import shared_memory
segments = []
for step in range(1, {STEPS} + 1):
    segment = shared_memory.SharedMemory(create=True, size={STEP_MIB} << 20)  # a file in /dev/shm
    segment.buf[:] = b'x' * ({STEP_MIB} << 20)
    segments.append(segment)
    print('held', step * {STEP_MIB}, flush=True)
"""

TMPFS_FILES = f"""\
for step in range(1, {STEPS} + 1):
    with open(f'/tmp/hog-{{step}}', 'wb') as handle:
        handle.write(b'x' * ({STEP_MIB} << 20))
    print('held', step * {STEP_MIB}, flush=True)
"""

CHILDREN = 8
CHILD_MIB = 3 * LIMIT_MIB // CHILDREN
MANY_CHILDREN = f"""\
import os, time
for child in range({CHILDREN}):
    if os.fork() == 0:
        block = b'x' * ({CHILD_MIB} << 20)
        print('held', {CHILD_MIB}, flush=True)
        time.sleep(60)
        os._exit(0)
    time.sleep(0.2)
for _ in range({CHILDREN}):
    os.wait()
"""

GROW_STEP_MIB = 4


def grows_after_a_sibling(limit_mib: int) -> str:
    """One child holds three quarters of the limit, a second grows in small steps to three times it. Were the
    kernel to OOM-kill one task of the run (the big one), the second would grow into what that freed until the
    sandbox's kill came; the run must end as a whole instead (cgroup v2's memory.oom.group; on v1 the kernel
    kills no task and the run waits at its limit for the sandbox's kill)."""
    big = 3 * limit_mib // 4
    return f"""\
import os, time
if os.fork() == 0:
    block = b'x' * ({big} << 20)
    print('held', {big}, flush=True)
    time.sleep(60)
    os._exit(0)
time.sleep(0.5)
if os.fork() == 0:
    blocks = []
    for step in range(1, (3 * {limit_mib} - {big}) // {GROW_STEP_MIB} + 1):
        blocks.append(b'x' * ({GROW_STEP_MIB} << 20))
        print('held', {big} + step * {GROW_STEP_MIB}, flush=True)
    time.sleep(60)
    os._exit(0)
os.wait()
os.wait()
"""


ATTACKS = {"memfd": MEMFD, "sysv-shm": SYSV_SHM, "posix-shm": POSIX_SHM, "tmpfs-files": TMPFS_FILES,
           "many-children": MANY_CHILDREN, "grows-after-a-sibling": grows_after_a_sibling(LIMIT_MIB)}


@pytest.fixture
def bounded(sandbox_factory: Any) -> SandboxProcess:
    """Cold runs with a 256 MiB bound and /tmp and /dev/shm big enough to hold 1 GiB."""
    sandbox: SandboxProcess = sandbox_factory(PYTHON_RUNNER_CONTAINER_MEMORY=f"{LIMIT_MIB}m",
                                              PYTHON_RUNNER_TMPFS_MOUNT_SIZE_IN_BYTES=str(1 << 30),
                                              PYTHON_PROCESS_TIMEOUT="60")
    mechanism = sandbox.health()["limits"]["mechanism"]
    assert mechanism in (CGROUP_V1_DELEGATED, CGROUP_V2), (
        f"runs get no memory cgroup here ({mechanism}): ./dev setup (host-setup) delegates one")
    return sandbox


def usage_file(runner: LiveRunner) -> Path:
    """The file that says how much memory the kernel charges to the run's cgroup (v1 or v2)."""
    for line in Path(f"/proc/{runner.pid}/cgroup").read_text().splitlines():
        _hierarchy, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.usage_in_bytes"
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            return Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.current"
    raise AssertionError(f"runner {runner.pid} is in no memory cgroup")


@dataclass
class Sampler:
    """Samples, from outside, what the run is charged and how much memory the host has available.

    The cgroup is looked up once, while the runner is known to be alive: its pid may be reused later."""

    usage: Path
    charged: list[int] = field(default_factory=list)
    available: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.charged.append(int(self.usage.read_text()))
            except (OSError, ValueError):
                return  # the run's cgroup is gone
            meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
            self.available.append(int(meminfo["MemAvailable"].split()[0]) << 10)
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_three_times_the_limit_ends_as_out_of_memory(bounded: SandboxProcess, receiver: CallbackReceiver,
                                                     podman: PodmanAPI, attack: str) -> None:
    before = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    script_id = 500 + list(ATTACKS).index(attack)
    started = time.monotonic()
    assert bounded.run(script_id, ATTACKS[attack]).status_code == 202
    [runner] = wait_for_runners(podman, bounded, 1)
    sampler = Sampler(usage_file(runner))
    thread = threading.Thread(target=sampler.run, daemon=True)
    thread.start()
    result = receiver.result(script_id)
    elapsed = time.monotonic() - started
    sampler.stop()
    thread.join()
    limit = LIMIT_MIB << 20
    held = [int(line.split()[1]) for line in result["output"].splitlines() if line.startswith("held ")]
    held_total = sum(held) if attack == "many-children" else max(held, default=0)
    low = min(sampler.available, default=0) >> 20
    context = (f"{attack}: held {held_total} MiB, charged up to {max(sampler.charged, default=0) >> 20} MiB "
               f"({len(sampler.charged)} samples), host MemAvailable {int(before['MemAvailable'].split()[0]) >> 10}"
               f" -> {low} MiB; output {result['output'][-300:]!r}")
    print(context)
    assert result["success"] is False and result["return_code"] == 137, context
    assert texts.OUT_OF_MEMORY.format(limit=f"{LIMIT_MIB} MiB") in result["output"], context
    assert held_total <= LIMIT_MIB, context
    assert sampler.charged and max(sampler.charged) <= limit, context
    assert elapsed < 30, context  # within seconds, not at the time limit (60 s)
    assert bounded.health()["status"] == "ok"


def test_runs_live_in_their_own_cgroups_which_go_with_them(sandbox_factory: Any, receiver: CallbackReceiver,
                                                           podman: PodmanAPI) -> None:
    sandbox = sandbox_factory(PYTHON_RUNNER_CONTAINER_MEMORY="300m", PYTHON_RUNNER_CONTAINER_PIDS="77",
                              PYTHON_PROCESS_TIMEOUT="60")
    if sandbox.health()["limits"]["mechanism"] != CGROUP_V1_DELEGATED:
        pytest.skip("the sandbox's own per-run cgroups are the cgroup v1 mechanism")
    script = "import ctypes, time\nctypes.CDLL(None).prctl(15, b'holding')\ntime.sleep(2)\nprint('done')\n"
    assert sandbox.run(520, script).status_code == 202
    [runner] = wait_for_runners(podman, sandbox, 1)
    wait_until_holding(runner)
    subtree = subtree_name(os.stat(sandbox.state_dir).st_uid)
    run_dirs = {}
    for controller in ("memory", "pids"):
        placed = runner.cgroup(controller)
        assert placed.startswith(f"/{subtree}/{runner.container}"), (controller, placed)
        run_dirs[controller] = Path("/sys/fs/cgroup") / controller / subtree / runner.container
    assert int((run_dirs["memory"] / "memory.limit_in_bytes").read_text()) == 300 << 20
    assert (run_dirs["pids"] / "pids.max").read_text().strip() == "77"
    assert receiver.result(520)["output"] == "done\n"
    deadline = time.monotonic() + 30
    while any(path.exists() for path in run_dirs.values()) or live_runners(podman, sandbox):
        assert time.monotonic() < deadline, "the run's cgroups outlived its container"
        time.sleep(0.1)


def test_runs_within_the_bound_are_untouched(bounded: SandboxProcess, receiver: CallbackReceiver) -> None:
    script = ("import os\nfd = os.memfd_create('ok')\nos.write(fd, b'x' * (100 << 20))\n"
              "data = bytearray(b'y' * (60 << 20))\nprint('fine', os.fstat(fd).st_size >> 20, len(data) >> 20)\n")
    assert bounded.run(530, script).status_code == 202
    result = receiver.result(530)
    assert (result["success"], result["output"]) == (True, "fine 100 60\n"), result


def test_a_run_at_its_limit_waits_as_a_whole_for_the_sandbox_kill(sandbox_account: SandboxUser) -> None:
    """cgroup v1, at the kernel: the run's cgroup made as the sandbox makes it, a run that meets its limit, and
    a sandbox whose kill comes a second late (a loaded host, a slow Podman). No task of the run may be killed by
    the kernel meanwhile: the others would grow into what it held (CI saw three children hold 288 MiB of 256)."""
    cgroups = RunCgroups(owner_uid=sandbox_account.uid)
    if cgroups.unusable():
        pytest.skip(f"no delegated cgroup v1 subtree here: {cgroups.unusable()}")
    limit_mib, container = 128, secrets.token_hex(32)
    met = threading.Event()
    cgroups.on_oom = lambda _container: met.set()
    script = grows_after_a_sibling(limit_mib)
    run = subprocess.Popen(["sh", "-c", 'read go && exec /usr/bin/python3 -u -c "$0"', script],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert run.stdin is not None
    procs = cgroups.base("memory") / container / "cgroup.procs"
    try:
        # Joined right after it is made: a sandbox starting meanwhile reclaims empty cgroups no container owns.
        cgroups.create(container, memory=limit_mib << 20, pids=64)
        procs.write_text(str(run.pid))
        cgroups.hold_at_limit(container)  # as the driver does once the container runs
        run.stdin.write("go\n")
        run.stdin.flush()
        assert met.wait(30), "the run never met its limit"
        time.sleep(1.0)  # the sandbox's kill, late
        tasks = procs.read_text().split()
        assert len(tasks) == 3, f"the kernel ended part of the run: {tasks} left of the script and its two children"
    finally:
        for pid in procs.read_text().split() if procs.exists() else []:
            os.kill(int(pid), signal.SIGKILL)
        run.kill()
        output, _ = run.communicate(timeout=30)
        cgroups.stop()
        cgroups.remove(container)
    held = [int(line.split()[1]) for line in output.splitlines() if line.startswith("held ")]
    assert held and max(held) <= limit_mib, output


def test_a_limit_too_small_for_the_runtime_stops_the_sandbox_and_leaves_podman_answering(
        sandbox_factory: Any, podman: PodmanAPI, sandbox_account: SandboxUser) -> None:
    """4 MiB does not hold `runc create`, which runs inside the run's cgroup on cgroup v1. The kernel must kill it
    there (one clear line, as for any runner that cannot start); were the run's tasks held at the limit already,
    runc would wait forever with Podman's lock on the container, and every later Podman call with it."""
    if RunCgroups(owner_uid=sandbox_account.uid).unusable():
        pytest.skip("runc create joins the run's cgroup only with the sandbox's own cgroup v1 subtree")
    with pytest.raises(AssertionError, match="sandbox exited at start") as failure:
        sandbox_factory(PYTHON_RUNNER_CONTAINER_MEMORY="4m", PYTHON_SANDBOX_WARM_POOL="0")
    assert "cannot run the sandbox's entrypoint" in str(failure.value)
    # In the sandbox's own words: the runtime's for it vary with the moment of the kill.
    assert "is too low for the container runtime itself: raise PYTHON_RUNNER_CONTAINER_MEMORY" in str(failure.value)
    podman.client.info()  # answers (the client's own timeout would raise)
