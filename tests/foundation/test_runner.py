"""The runner image and its trusted entrypoint, driven through the sandbox user's API socket."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from sandbox.driver import ContainerDriver, Job
from sandbox.host import SandboxUser
from sandbox.identity import RUN_UID_FIRST
from sandbox.podman_api import PodmanAPI
from tests.foundation.conftest import RunFn


def test_podman_service_is_rootless(podman: PodmanAPI, sandbox_user: SandboxUser) -> None:
    info = podman.client.info()
    assert info["host"]["security"]["rootless"] is True
    assert sandbox_user.uid != 0
    assert sandbox_user.socket_path.stat().st_uid == sandbox_user.uid


def test_runner_imports_packages_and_reads_context_from_stdin(run_script: RunFn) -> None:
    script = (
        "import pandas, seatable_api, barcode, PIL, qrcode, requests\n"
        "from seatable_api import context\n"
        "print('table:', context.current_table)\n"
        "print('row:', context.current_row['Name'])\n"
        "print('server:', context.server_url)\n"
    )
    context = {"table": "Contacts", "row": {"Name": "Ada"}}
    result = run_script(script, input=json.dumps(context), env={"dtable_web_url": "https://cloud.example"})
    assert result.return_code == 0, result.output
    assert result.output == "table: Contacts\nrow: Ada\nserver: https://cloud.example\n"


def test_dangerous_syscalls_fail_with_eperm(run_script: RunFn) -> None:
    script = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "calls = {\n"
        "  'ptrace': lambda: libc.ptrace(0, 0, 0, 0),\n"
        "  'mount': lambda: libc.mount(b'none', b'/tmp', b'tmpfs', 0, None),\n"
        "  'unshare': lambda: libc.unshare(0x10000000),\n"
        "  'io_uring_setup': lambda: libc.syscall(425, 8, ctypes.create_string_buffer(120)),\n"
        "  'keyctl': lambda: libc.syscall(250, 0, 0, 0, 0, 0),\n"
        "  'bpf': lambda: libc.syscall(321, 0, 0, 0),\n"
        "}\n"
        "for name, call in calls.items():\n"
        "    rc = call()\n"
        "    print(name, rc, os.strerror(ctypes.get_errno()))\n"
        "print('uid', os.getuid(), os.geteuid(), os.getgid())\n"
        "status = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
        "print('nnp', status['NoNewPrivs'].strip(), 'filters', status['Seccomp_filters'].strip())\n"
        "print('caps', status['CapEff'].strip())\n"
    )
    result = run_script(script)
    assert result.return_code == 0, result.output
    lines = result.output.splitlines()
    for name in ("ptrace", "mount", "unshare", "io_uring_setup", "keyctl", "bpf"):
        assert f"{name} -1 Operation not permitted" in lines, result.output
    uid_line = next(line for line in lines if line.startswith("uid "))
    uid, euid, gid = (int(x) for x in uid_line.split()[1:])
    assert uid == euid == gid >= RUN_UID_FIRST, uid_line  # a uid of its own (sandbox.identity), never root
    assert "nnp 1 filters 2" in lines  # Podman's profile and the entrypoint's filter
    assert "caps 0000000000000000" in lines


def test_threads_and_subprocesses_still_work(run_script: RunFn) -> None:
    """The clone3 -> ENOSYS rule must leave glibc's fallback to clone working."""
    script = (
        "import threading, subprocess\n"
        "t = threading.Thread(target=print, args=('thread ok',)); t.start(); t.join()\n"
        "print(subprocess.run(['echo', 'child ok'], capture_output=True, text=True).stdout, end='')\n"
    )
    result = run_script(script)
    assert result.output == "thread ok\nchild ok\n"
    assert result.return_code == 0


def test_no_setuid_or_setgid_files_in_the_image(run_script: RunFn) -> None:
    result = run_script(
        "import subprocess\n"
        "r = subprocess.run(['find', '/', '-xdev', '-perm', '/6000', '-type', 'f'], capture_output=True, text=True)\n"
        "print('found:', r.stdout.split())\n"
    )
    assert result.output == "found: []\n"


def test_no_runner_process_is_root_on_the_host(driver: ContainerDriver, sandbox_user: SandboxUser) -> None:
    containers: list[str] = []
    seen: dict[str, str] = {}
    runner_uid: list[int | None] = []

    def look() -> None:
        while not containers:
            time.sleep(0.02)
        runner_uid.append(driver.runner_uid(containers[0]))
        pid = driver.api.inspect(containers[0])["State"]["Pid"]
        children = Path(f"/proc/{pid}/task/{pid}/children")
        deadline = time.monotonic() + 10
        while not children.read_text().split() and time.monotonic() < deadline:
            time.sleep(0.05)  # until the script has started its child (slow on a loaded machine)
        tree = [pid, *children.read_text().split()]
        for p in tree:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{p}/status").read_text().splitlines())
            seen[str(p)] = status["Uid"].split()[0] + "/" + status["Gid"].split()[0]

    watcher = threading.Thread(target=look)
    watcher.start()
    job = Job(2, "import subprocess, time\np = subprocess.Popen(['sleep', '5'])\ntime.sleep(5)\n", "", {})
    result = driver.run(job, 30, containers.append, lambda _s: None)
    watcher.join()
    driver.cleanup(containers[0])
    assert result.return_code == 0, result.output
    assert len(seen) == 2, seen  # the interpreter and its child
    subuid_start = int(next(line.split(":")[1] for line in Path("/etc/subuid").read_text().splitlines()
                            if line.startswith(sandbox_user.name + ":")))
    assert runner_uid and runner_uid[0] is not None and runner_uid[0] >= RUN_UID_FIRST
    for pid, ids in seen.items():
        uid, gid = (int(x) for x in ids.split("/"))
        assert uid != 0 and gid != 0, f"pid {pid} runs as {ids} on the host"
        # Container uid N maps to the user's N+1st subordinate id (container 0 is a subordinate id too).
        assert uid == gid == subuid_start + runner_uid[0], f"pid {pid}: {ids} is not the run's own host uid"
        assert uid != sandbox_user.uid


def test_token_is_not_in_container_config(driver: ContainerDriver) -> None:
    secret = "tok-" + "7" * 24
    containers: list[str] = []
    inspected: list[str] = []

    def look() -> None:
        while not containers:
            time.sleep(0.02)
        time.sleep(0.5)
        inspected.append(json.dumps(driver.api.inspect(containers[0])))

    watcher = threading.Thread(target=look)
    watcher.start()
    result = driver.run(Job(3, "import os, time\nassert os.environ['api_token']\ntime.sleep(1.5)\n", "",
                            {"api_token": secret}), 30, containers.append, lambda _s: None)
    watcher.join()
    driver.cleanup(containers[0])
    assert result.return_code == 0, result.output
    assert inspected and containers[0] in inspected[0]
    assert secret not in inspected[0]
