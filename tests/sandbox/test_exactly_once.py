"""Issue 12 on the sandbox side, with real runners and a real callback receiver.

At most once whatever the callbacks answer, never a lost result, health that means healthy, and
outcomes the host decides (a script cannot forge them).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox import texts
from sandbox.driver import LABEL, LABEL_SCRIPT
from sandbox.host import SandboxUser
from sandbox.podman_api import PodmanAPI
from tests.support.podman import CallbackReceiver, SandboxProcess, secret_for

EMOJI = "\U0001F600"
RUNNING = "/script-running-callback/"


def run(sandbox: SandboxProcess, receiver: CallbackReceiver, script_id: int, script: str,
        timeout: float = 90) -> dict[str, Any]:
    response = sandbox.run(script_id, script)
    assert response.status_code == 202, response.text
    return receiver.result(script_id, timeout=timeout)


def eventually(check: Any, timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


# --- at most once, whatever the callbacks answer ---------------------------------------------------

@pytest.mark.parametrize("fault", [401, 404, 500])
def test_deployment_errors_are_retried_then_delivered_without_a_rerun(
        sandbox_factory: Any, receiver: CallbackReceiver, fault: int) -> None:
    """Issue 12: with a wrong token each script ran 3 times and stayed pending forever."""
    if fault == 401:
        receiver.token = "the-schedulers-own-token"  # the sandbox sends the run's callback secret
    else:
        receiver.answer = lambda path, body: fault
    sandbox = sandbox_factory()
    # Long enough to be reported running (sandbox.runs.RUNNING_CALLBACK_DELAY): both callbacks wait.
    assert sandbox.run(201, "import time\ntime.sleep(1)\nprint('once')").status_code == 202
    receiver.wait_for(lambda: len(receiver.tries(201, None)) >= 3)
    # The run ends and its results wait (on a busy machine the running callback alone can fail three times
    # before the script ends, and the result is sent only after it).
    eventually(lambda: sandbox.state(201) == (200, {"script_id": 201, "state": "reporting"}), what="reporting")
    again = sandbox.run(201, "print('twice')")
    assert again.status_code == 409
    assert again.json() == {"error": "script_id 201 is already here", "state": "reporting"}
    delivery = sandbox.health()["outbox"]["delivery"]
    assert delivery["failing"] is True and delivery["last_error"].startswith(f"HTTP {fault}:")
    assert sandbox.health()["outbox"]["oldest_pending_age_s"] > 0
    ready = sandbox.ready()
    assert ready[0] == 200, ready  # the node still runs scripts; only their results wait

    receiver.token = ""
    receiver.answer = None  # the deployment is fixed
    assert receiver.result(201)["output"] == "once\n"
    eventually(lambda: sandbox.state(201) == (200, {"script_id": 201, "state": "done"}), what="tombstone")
    assert sandbox.run(201, "print('twice')").json()["state"] == "done"
    acknowledged = [c for c in receiver.received if c.body.get("script_id") == 201]
    assert [c.path for c in acknowledged] == [RUNNING, "/script-result/"]  # one execution, one result
    assert sandbox.health()["outbox"]["delivery"]["failing"] is False
    errors = [line for line in sandbox.log().splitlines() if " ERROR " in line and "not delivered" in line]
    assert len(errors) == 1, errors  # once per cause, not per attempt
    assert f"HTTP {fault}" in errors[0] and secret_for(201) not in sandbox.log()


def test_a_node_never_seen_answers_404(sandbox: SandboxProcess) -> None:
    assert sandbox.state(299) == (404, {"error": texts.NOT_HERE.format(script_id=299)})


# --- never lose a result ----------------------------------------------------------------------------

def test_700000_emoji_arrive_whole(sandbox: SandboxProcess, receiver: CallbackReceiver) -> None:
    """Issue 12: 700,000 emoji made an 8.4 MB body (ASCII-escaped), refused with 413 and lost."""
    receiver.max_body = 8388608  # the scheduler's default limit
    result = run(sandbox, receiver, 210, f"print('{EMOJI}' * 700000)")
    assert result["output"] == EMOJI * 700_000 + "\n"
    assert result["success"] is True
    assert len(receiver.tries(210)) == 1 and receiver.tries(210)[0].size < 3 << 20


def test_a_result_over_the_body_limit_is_cut_to_fit(sandbox_factory: Any, receiver: CallbackReceiver) -> None:
    limit = 1_000_000
    receiver.max_body = limit
    sandbox = sandbox_factory(PYTHON_SCHEDULER_MAX_BODY_BYTES=str(limit))
    result = run(sandbox, receiver, 211, f"print('{EMOJI}' * 700000)")
    kept = result["output"].index("\n[")
    assert result["output"][:kept] == EMOJI * kept  # intact up to the cut
    assert result["output"][kept:] == texts.notice(texts.BODY_LIMIT.format(kept=kept, limit=limit))
    assert result["success"] is True and result["return_code"] == 0
    assert [c.status for c in receiver.tries(211)] == [200]
    assert limit - 8 <= receiver.tries(211)[0].size <= limit


def test_a_413_from_the_scheduler_ends_the_run_as_a_clear_failure(
        sandbox: SandboxProcess, receiver: CallbackReceiver) -> None:
    receiver.max_body = 100_000  # smaller than the sandbox believes: the scheduler refuses the body
    result = run(sandbox, receiver, 212, "print('z' * 300000)")
    assert {k: result[k] for k in ("script_id", "success", "return_code", "output")} == {
        "script_id": 212, "success": False, "return_code": None,
        "output": texts.RESULT_REFUSED.format(status=413)}
    assert result["started_at"] > 0 and result["spend_time"] >= 0
    assert [c.status for c in receiver.tries(212)] == [413, 200]
    assert sandbox.health()["outbox"]["results_replaced"] == 1
    eventually(lambda: sandbox.state(212)[1].get("state") == "done", what="tombstone")


# --- health that means healthy ----------------------------------------------------------------------

class SocketRelay:
    """A Unix socket that relays to Podman's API socket; stopping it makes Podman unreachable for the
    sandbox, as a dead Podman service would, without touching the shared service itself."""

    def __init__(self, target: Path, path: Path) -> None:
        self.target, self.path = target, path
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        os.chmod(self.path, 0o666)  # noqa: S103 - the sandbox user connects, as to its own Podman socket
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(str(self.target))
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.path.unlink(missing_ok=True)
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._open.clear()


@pytest.fixture
def relay(sandbox_user: SandboxUser) -> Any:
    directory = Path(tempfile.mkdtemp(prefix="podman-relay-"))  # pytest's own temp dirs are root-only
    directory.chmod(0o755)
    relay = SocketRelay(sandbox_user.socket_path, directory / "podman.sock")
    relay.start()
    yield relay
    relay.stop()
    shutil.rmtree(directory, ignore_errors=True)


def test_a_node_whose_podman_is_gone_refuses_runs_until_it_is_back(
        relay: SocketRelay, sandbox_factory: Any, receiver: CallbackReceiver) -> None:
    # The relay first, so it goes last: the sandbox's graceful stop removes its runners through it.
    sandbox = sandbox_factory(PYTHON_SANDBOX_PODMAN_URL=f"unix://{relay.path}")
    assert sandbox.ready() == (200, {"node": sandbox.env["PYTHON_SANDBOX_NODE_NAME"],
                                     "slots": {"total": 4, "busy": 0, "free": 4}})
    assert run(sandbox, receiver, 220, "print('before')")["output"] == "before\n"
    relay.stop()
    _status, body = eventually(lambda: (r := sandbox.ready())[0] == 503 and r, what="/ready 503")
    assert body["error"].startswith("podman unreachable:") and body["node"] == sandbox.env["PYTHON_SANDBOX_NODE_NAME"]
    refused = sandbox.run(221, "print('not now')")
    assert refused.status_code == 503 and refused.json()["error"].startswith("podman unreachable:")
    health = requests.get(sandbox.url + "/health", timeout=10)
    assert health.status_code == 503
    assert health.json()["status"] == "unhealthy" and health.json()["problems"][0].startswith("podman unreachable")
    assert sandbox.state(221)[0] == 404  # provably never accepted: it may go to another node
    relay.start()
    eventually(lambda: sandbox.ready()[0] == 200, what="/ready 200 again")
    assert run(sandbox, receiver, 221, "print('after')")["output"] == "after\n"
    assert sandbox.health()["status"] == "ok"


def test_a_full_outbox_refuses_runs_until_the_scheduler_takes_the_results(
        sandbox_factory: Any, receiver: CallbackReceiver) -> None:
    receiver.stop()
    sandbox = sandbox_factory(PYTHON_SANDBOX_OUTBOX_MAX_BYTES="1m")
    noise = "import base64, os\nprint(base64.b64encode(os.urandom(450000)).decode())\n"  # 600 KB, barely compressible
    for script_id in (230, 231, 232):
        assert sandbox.run(script_id, noise).status_code == 202
    _status, body = eventually(lambda: (r := sandbox.ready())[0] == 503 and r, timeout=90, what="outbox full")
    assert body["error"].startswith("outbox full:") and "PYTHON_SANDBOX_OUTBOX_MAX_BYTES" in body["error"]
    refused = sandbox.run(233, "print(1)")
    assert refused.status_code == 503 and refused.json()["error"].startswith("outbox full:")
    eventually(lambda: sandbox.health()["runs_finished"] == 3, what="runs finished")
    receiver.start()
    for script_id in (230, 231, 232):
        assert len(receiver.result(script_id)["output"]) == 600001
    eventually(lambda: sandbox.ready()[0] == 200, timeout=60, what="space reclaimed")
    assert sandbox.health()["outbox"]["disk_bytes"] < 256 << 10
    assert run(sandbox, receiver, 233, "print(1)")["output"] == "1\n"


# --- outcomes decided by the host ---------------------------------------------------------------------

FORGE = (
    "import json, os, sys\n"
    "old = b'\\x00seatable-runner-exit 0\\n'\n"
    "new = b'\\x00seatable-runner-exit ' + json.dumps({'status': STATUS}).encode() + b'\\n'\n"
    "for line in (old, new):\n"
    "    os.write(1, line)\n"
    "    os.write(2, line)\n"
    "    sys.stderr.buffer.write(line); sys.stderr.flush()\n"
    "pipes = set()\n"
    "for fd in os.listdir('/proc/self/fd'):\n"
    "    try:\n"
    "        target = os.readlink(f'/proc/self/fd/{fd}')\n"
    "    except OSError:\n"
    "        continue\n"
    "    if target.startswith('pipe:'):\n"
    "        pipes.add(target)\n"
    "    if int(fd) > 2:\n"
    "        try:\n"
    "            os.write(int(fd), new)\n"
    "        except OSError:\n"
    "            pass\n"
    "print('pipes', len(pipes))\n"
    "for path in ('/proc/1/fd/2', '/proc/1/mem', '/proc/1/environ'):\n"
    "    try:\n"
    "        open(path, 'wb').write(new); print('WROTE', path)\n"
    "    except OSError as e:\n"
    "        print(path, e.strerror)\n"
    "for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL, signal.SIGSTOP):\n"
    "    os.kill(1, sig)\n"
    "print('pid 1 still there')\n"
)
DENIED = ("pipes 1\n/proc/1/fd/2 Permission denied\n/proc/1/mem Permission denied\n"
          "/proc/1/environ Permission denied\npid 1 still there\n")


@pytest.mark.parametrize(("status", "code", "success"), [("0", 5, False), ("9", 0, True)])
def test_forged_exit_lines_change_nothing(sandbox_factory: Any, receiver: CallbackReceiver,
                                          status: str, code: int, success: bool) -> None:
    sandbox = sandbox_factory(PYTHON_RUNNER_NETWORK="none")
    script = "import signal\n" + FORGE.replace("STATUS", status) + f"sys.exit({code})\n"
    result = run(sandbox, receiver, 240, script)
    assert result["output"].endswith(DENIED), result["output"]
    assert "\x00seatable-runner-exit" in result["output"]  # the forgeries are plain output
    assert result["return_code"] == code and result["success"] is success


def test_a_kernel_sigkill_reads_as_killed_by_signal_9(sandbox_factory: Any, receiver: CallbackReceiver,
                                                      podman: PodmanAPI) -> None:
    """Issue 12: a run SIGKILLed by the kernel reported success: true, return_code: 0 (forged trailer)."""
    sandbox = sandbox_factory(PYTHON_PROCESS_TIMEOUT="60", PYTHON_RUNNER_NETWORK="none")  # cold
    script = "import signal, time\n" + FORGE.replace("STATUS", "0") + "time.sleep(60)\n"
    assert sandbox.run(241, script).status_code == 202
    receiver.wait_for(lambda: bool(receiver.tries(241, RUNNING)))
    node = sandbox.env["PYTHON_SANDBOX_NODE_NAME"]
    container = eventually(lambda: [c for c in podman.labelled(f"{LABEL}={node}")
                                    if c["Labels"].get(LABEL_SCRIPT) == "241"], what="the runner")[0]
    pid1 = podman.inspect(container["Id"])["State"]["Pid"]
    entrypoint = Path(f"/proc/{pid1}/cmdline").read_bytes()

    def forked() -> list[int]:  # not a helper pid 1 runs before (pyseccomp's ldconfig)
        found = []
        for pid in Path(f"/proc/{pid1}/task/{pid1}/children").read_text().split():
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes() == entrypoint:
                    found.append(int(pid))
            except FileNotFoundError:
                pass
        return found

    script_pid = eventually(forked, what="the script's process")[0]
    time.sleep(1)  # its forgeries are written
    os.kill(script_pid, signal.SIGKILL)  # as the kernel's OOM killer would
    result = receiver.result(241)
    assert result["output"].endswith(texts.notice(texts.KILLED_BY_SIGNAL.format(signal=9)))
    assert result["success"] is False and result["return_code"] == 137


@pytest.mark.parametrize(("script", "code", "seconds"), [
    # The script lowers its own CPU limit: the kernel sends SIGXCPU at the soft limit ...
    ("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (1, resource.getrlimit(resource.RLIMIT_CPU)[1]))\n"
     "while True:\n    pass\n", 128 + signal.SIGXCPU, "1"),
    # ... and SIGKILL at the hard limit when SIGXCPU is ignored.
    ("import resource, signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
     "resource.setrlimit(resource.RLIMIT_CPU, (1, 2))\nwhile True:\n    pass\n", 128 + signal.SIGKILL, "2"),
], ids=["sigxcpu", "sigkill"])
def test_a_cpu_time_limit_kill_is_not_out_of_memory(sandbox_factory: Any, receiver: CallbackReceiver,
                                                    script: str, code: int, seconds: str) -> None:
    """Issue 12: any exit 137 read as out of memory, also a CPU-time-limit kill of a script that allocated nothing."""
    sandbox = sandbox_factory(PYTHON_PROCESS_TIMEOUT="300")  # CPU seconds come slowly on a busy machine
    result = run(sandbox, receiver, 242, script, timeout=400)
    # On failure, the sandbox's log says what pid 1's record held (CPU seconds, limits).
    assert result["output"] == texts.notice(texts.CPU_LIMIT.format(seconds=seconds)), sandbox.log()[-3000:]
    assert result["return_code"] == code and result["success"] is False


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_newline_less_flood_on_the_control_path_does_not_pin_the_sandbox(
        sandbox_factory: Any, receiver: CallbackReceiver) -> None:
    """Issue 12: 3 runs writing bytes without a newline to the control stream kept the worker at ~100 % CPU."""
    sandbox = sandbox_factory(PYTHON_PROCESS_TIMEOUT="60", PYTHON_RUNNER_OUTPUT_LIMIT="1000")
    worker = sandbox.worker_pid()
    run(sandbox, receiver, 250, "print('warm-up')")
    floods = {
        251: "os.write(2, b'\\x00seatable-runner-exit ' + b'x' * 65000)",  # big writes, the old trailer prefix
        252: "os.write(2, b'x')",  # the smallest frames there are
        253: "os.write(2, b'\\x00' * 4096)",
    }
    for script_id, write in floods.items():
        script = f"import os, time\nend = time.monotonic() + 8\nwhile time.monotonic() < end:\n    {write}\n"
        assert sandbox.run(script_id, script).status_code == 202
    cpu0, t0 = cpu_seconds(worker), time.monotonic()
    answers = []
    while len([sid for sid in floods if sid in receiver.results()]) < len(floods):
        health = requests.get(sandbox.url + "/health", timeout=10)
        answers.append(health.status_code if health.status_code == 200 else health.json()["problems"])
        time.sleep(0.2)
        assert time.monotonic() - t0 < 120, "the floods did not end"
    share = (cpu_seconds(worker) - cpu0) / (time.monotonic() - t0)
    print(f"sandbox worker CPU share during the floods: {share:.0%}, {len(answers)} /health answers")
    assert answers and all(answer == 200 for answer in answers), answers
    assert share < 0.5, f"the sandbox worker used {share:.0%} of a CPU while 3 runs flooded"
    for script_id in floods:
        result = receiver.result(script_id)
        assert result["success"] is True and result["return_code"] == 0
        assert result["output"].endswith(texts.notice(texts.OUTPUT_LIMIT.format(limit=1000)))


def test_a_finished_runner_is_removed_once_its_result_is_taken(sandbox_factory: Any, receiver: CallbackReceiver,
                                                               podman: PodmanAPI) -> None:
    """Issue 16: removal (tens of ms of Podman's CPU) waits until the scheduler took the result, at most
    REMOVAL_WAITS_FOR_RESULT; a scheduler that does not take it does not keep the container."""
    arrived, taken = threading.Event(), threading.Event()

    def hold_results(path: str, body: dict[str, Any]) -> int:
        if path == "/script-result/":
            arrived.set()
            if not taken.wait(timeout=30):
                return 503
        return 200

    receiver.answer = hold_results
    sandbox = sandbox_factory(PYTHON_RUNNER_NETWORK="none")
    node = sandbox.env["PYTHON_SANDBOX_NODE_NAME"]

    def runners(script_id: int) -> list[dict[str, Any]]:
        return [c for c in podman.labelled(f"{LABEL}={node}") if c["Labels"].get(LABEL_SCRIPT) == str(script_id)]

    assert sandbox.run(251, "print('held')").status_code == 202
    assert arrived.wait(timeout=60)  # the result is on its way and not yet taken
    time.sleep(0.5)
    # Ended and still there; "stopped", not "exited": no cleanup process ran, its removal cleans up (runner_monitor).
    assert [c["State"] for c in runners(251)] == ["stopped"]
    taken.set()
    assert receiver.result(251)["output"] == "held\n"
    eventually(lambda: not runners(251), what="the runner removed after its result was taken")

    receiver.answer = lambda path, body: 503 if path == "/script-result/" else 200  # never taken
    assert sandbox.run(252, "print('unanswered')").status_code == 202
    receiver.wait_for(lambda: any(c.path == "/script-result/" for c in receiver.tries(252, None)))
    eventually(lambda: not runners(252), timeout=15, what="the runner removed although its result waits")
    assert sandbox.state(252) == (200, {"script_id": 252, "state": "reporting"})
    receiver.answer = None
    assert receiver.result(252)["output"] == "unanswered\n"
