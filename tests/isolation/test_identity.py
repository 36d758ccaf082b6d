"""Each live run has a host identity of its own: per-user kernel budgets are per run (issue 13, item 1).

Attack scripts from the issue: a run holding every process slot it may have, and a run trying to take
every inotify instance (a quota the kernel charges to the sandbox user whatever a runner's uid).
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from sandbox.host import SandboxUser
from sandbox.identity import CLAIM_GRACE, RUN_UID_FIRST, IdMapping, NoIdentity, RunnerIdentities
from sandbox.podman_api import PodmanAPI
from tests.isolation.runners import MARK_HOLDING, wait_for_runners, wait_until_holding
from tests.support.podman import CallbackReceiver


def subuid_start(user: SandboxUser) -> int:
    for line in Path("/etc/subuid").read_text().splitlines():
        name, start, _count = line.split(":")
        if name == user.name:
            return int(start)
    raise AssertionError(f"{user.name} has no subordinate uids")


def test_each_live_run_has_a_host_uid_of_its_own(sandbox_factory: Any, receiver: CallbackReceiver,
                                                 podman: PodmanAPI, sandbox_user: SandboxUser) -> None:
    sandbox = sandbox_factory(PYTHON_PROCESS_TIMEOUT="60")  # cold: one container per run
    script = MARK_HOLDING + "import os, time\ntime.sleep(3)\nprint(os.getuid(), os.getgid())\n"
    for script_id in (401, 402, 403):
        assert sandbox.run(script_id, script).status_code == 202
    runners = wait_for_runners(podman, sandbox, 3)
    for runner in runners:
        wait_until_holding(runner)
    host_uids = {runner.host_uid for runner in runners}
    ps = subprocess.run(["ps", "-o", "uid=", "-p", ",".join(str(r.pid) for r in runners)],
                        capture_output=True, text=True, check=True).stdout.split()
    assert sorted(int(uid) for uid in ps) == sorted(host_uids)
    assert len(host_uids) == 3, f"runs share a host uid: {host_uids}"
    for runner in runners:
        assert runner.container_uid >= RUN_UID_FIRST
        assert runner.host_uid == subuid_start(sandbox_user) + runner.container_uid
        assert runner.status("Gid").split()[0] == str(runner.host_uid)
        # The whole mapping leaves the sandbox user out: container root is nobody on the host either.
        for line in Path(f"/proc/{runner.pid}/uid_map").read_text().splitlines():
            _inside, outside, count = (int(x) for x in line.split())
            assert not outside <= sandbox_user.uid < outside + count, line
            assert outside != 0
    outputs = {receiver.result(script_id)["output"] for script_id in (401, 402, 403)}
    assert outputs == {f"{r.container_uid} {r.container_uid}\n" for r in runners}


PROCESS_HOG = """\
import ctypes, errno, os, time
children = 0
while True:
    try:
        pid = os.fork()
    except OSError as exc:
        stopped = errno.errorcode[exc.errno]
        break
    if pid == 0:
        time.sleep(120)
        os._exit(0)
    children += 1
ctypes.CDLL(None).prctl(15, b'holding')
time.sleep(8)
print(children, stopped)
"""

NEEDS_PROCESSES = """\
import ctypes.util, subprocess, threading
threads = [threading.Thread(target=sum, args=([1, 2],)) for _ in range(20)]
for t in threads: t.start()
for t in threads: t.join()
print(ctypes.util.find_library('seccomp') is not None,  # ctypes starts a process to find it
      subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout.strip())
"""


def test_a_run_holding_all_its_processes_leaves_other_runs_alone(
        sandbox_factory: Any, receiver: CallbackReceiver, podman: PodmanAPI) -> None:
    sandbox = sandbox_factory(PYTHON_RUNNER_CONTAINER_PIDS="64", PYTHON_PROCESS_TIMEOUT="60")
    # The hog marks itself only once fork fails, i.e. while it holds every process it may have.
    assert sandbox.run(410, PROCESS_HOG).status_code == 202
    [runner] = wait_for_runners(podman, sandbox, 1)
    wait_until_holding(runner)
    for script_id in (411, 412, 413):
        assert sandbox.run(script_id, NEEDS_PROCESSES).status_code == 202
    for script_id in (411, 412, 413):
        result = receiver.result(script_id)
        assert (result["success"], result["output"]) == (True, "True child\n"), result
    held = receiver.result(410)
    children, stopped = held["output"].split()
    assert stopped == "EAGAIN"
    assert int(children) >= 55, f"the hog held only {children} of its 64 processes"


INOTIFY_HOG = """\
import ctypes, errno, time
libc = ctypes.CDLL(None, use_errno=True)
fds, errors = [], set()
for _ in range(200):
    fd = libc.inotify_init1(0)
    if fd < 0:
        errors.add(errno.errorcode[ctypes.get_errno()])
    else:
        fds.append(fd)
old = libc.syscall(253)  # inotify_init, the older call
errors.add(errno.errorcode[ctypes.get_errno()] if old < 0 else 'allowed')
libc.prctl(15, b'holding')
time.sleep(4)
print(len(fds), sorted(errors))
"""

HOST_INOTIFY = """\
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
fds = [libc.inotify_init1(0) for _ in range(20)]
print(sum(fd >= 0 for fd in fds), os.strerror(ctypes.get_errno()) if min(fds) < 0 else 'ok')
"""


def test_inotify_exhaustion_in_a_run_does_not_reach_the_sandbox_user(
        sandbox_factory: Any, receiver: CallbackReceiver, podman: PodmanAPI, sandbox_user: SandboxUser) -> None:
    sandbox = sandbox_factory(PYTHON_PROCESS_TIMEOUT="60")
    assert sandbox.run(420, INOTIFY_HOG).status_code == 202
    [runner] = wait_for_runners(podman, sandbox, 1)
    wait_until_holding(runner)
    # While the run holds whatever it got: the sandbox user's own budget (128 per user here) is intact.
    host = sandbox_user.run(["/usr/bin/python3", "-c", HOST_INOTIFY])
    assert host.stdout == "20 ok\n", host.stdout + host.stderr
    result = receiver.result(420)
    assert result["output"] == "0 ['EPERM']\n", result


# --- the uid pool itself (real claim files, no containers) --------------------------------------

def pools(tmp_path: Path, count: int) -> tuple[RunnerIdentities, RunnerIdentities]:
    mapping = IdMapping(size=RUN_UID_FIRST + count, host_first=100000, owner_uid=0)
    return (RunnerIdentities(mapping, tmp_path / "claims", "node-a"),
            RunnerIdentities(mapping, tmp_path / "claims", "node-b"))


def test_uids_are_never_handed_out_twice_while_held(tmp_path: Path) -> None:
    """Two sandboxes on one Podman user, claiming at once: every uid once, then none left."""
    a, b = pools(tmp_path, 40)
    with concurrent.futures.ThreadPoolExecutor(8) as executor:
        by_a = executor.map(lambda _: a.claim(), range(20))
        by_b = executor.map(lambda _: b.claim(), range(20))
        claimed_a, claimed_b = set(by_a), set(by_b)
    assert len(claimed_a) == len(claimed_b) == 20 and not claimed_a & claimed_b
    assert min(claimed_a | claimed_b) >= RUN_UID_FIRST
    for pool in (a, b):
        with pytest.raises(NoIdentity):
            pool.claim()
    returned = min(claimed_a)
    a.release(returned)
    assert b.claim() == returned  # free again once released, for whoever asks


def test_a_crashed_nodes_claims_are_reclaimed_only_by_that_node(tmp_path: Path) -> None:
    a, b = pools(tmp_path, 10)
    held_by_a = [a.claim() for _ in range(3)]
    held_by_b = b.claim()
    restarted = pools(tmp_path, 10)[0]  # node-a again, after a crash: it holds nothing
    assert restarted.reclaim(live={held_by_b}) == 3
    assert sorted(int(p.name) for p in (tmp_path / "claims").iterdir()) == [held_by_b]
    assert held_by_b not in {restarted.claim() for _ in range(9)}
    assert len(held_by_a) == 3


def test_claims_of_a_node_that_never_returns_go_once_no_container_uses_them(tmp_path: Path) -> None:
    gone, other = pools(tmp_path, 10)
    stale = gone.claim()
    fresh = gone.claim()
    old = time.time() - CLAIM_GRACE - 1
    os.utime(tmp_path / "claims" / str(stale), (old, old))
    assert other.reclaim(live=set()) == 1  # only the old one: a fresh claim may be about to get its container
    assert sorted(int(p.name) for p in (tmp_path / "claims").iterdir()) == [fresh]
    os.utime(tmp_path / "claims" / str(fresh), (old, old))
    assert other.reclaim(live={fresh}) == 0  # a container still runs with it
