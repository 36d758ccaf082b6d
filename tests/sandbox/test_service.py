"""The sandbox service over real HTTP, running rootless runners through the user's Podman socket."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox import texts
from sandbox.driver import LABEL
from sandbox.identity import RUN_UID_FIRST, IdMapping
from sandbox.podman_api import PodmanAPI
from tests.support.podman import PATHS, CallbackReceiver, SandboxProcess, SandboxStarter, secret_for


@pytest.fixture
def receiver(shared_receiver: CallbackReceiver) -> CallbackReceiver:
    return shared_receiver


@pytest.fixture
def sandbox(module_sandboxes: SandboxStarter, receiver: CallbackReceiver,
            request: pytest.FixtureRequest) -> SandboxProcess:
    """One sandbox per path ("warm" by default, or "cold" parametrized indirectly) for this whole module:
    every test here leaves it idle, with its runs ended and ids of its own. Tests that need a sandbox of their
    own (other settings, a killed or counted one) take sandbox_factory."""
    return module_sandboxes.shared(getattr(request, "param", "warm"))


def ours(podman: PodmanAPI, sandbox: SandboxProcess) -> list[dict[str, Any]]:
    return podman.labelled(f"{LABEL}={sandbox.env['PYTHON_SANDBOX_NODE_NAME']}")


def run(sandbox: SandboxProcess, receiver: CallbackReceiver, script_id: int, script: str,
        **kwargs: Any) -> dict[str, Any]:
    response = sandbox.run(script_id, script, **kwargs)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": True}
    return receiver.result(script_id)


def test_hello_world_with_callbacks(sandbox: SandboxProcess, receiver: CallbackReceiver,
                                    podman: PodmanAPI) -> None:
    # Long enough to be reported running (sandbox.runs.RUNNING_CALLBACK_DELAY); a shorter run's result stands in for it.
    result = run(sandbox, receiver, 101, "import time\ntime.sleep(1)\nprint('hello world')")
    assert result["output"] == "hello world\n"
    assert result["success"] is True and result["return_code"] == 0 and result["outcome"] == "success"
    assert set(result) == {"script_id", "success", "return_code", "output", "started_at", "spend_time", "outcome"}
    running = [c for c in receiver.received if c.path == "/script-running-callback/"]
    assert [c.body["script_id"] for c in running] == [101]
    assert running[0].body["started_at"] == result["started_at"]
    assert all(c.auth == f"Token {secret_for(101)}" for c in receiver.received)  # the run's own secret
    assert receiver.received[-1].path == "/script-result/"
    # The used runner is removed; what remains are the pool's idle runners, waiting.
    pool = int(sandbox.env["PYTHON_SANDBOX_WARM_POOL"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = ours(podman, sandbox)
        if len(left) == pool and all(c["State"] == "running" for c in left):
            break
        time.sleep(0.1)
    assert len(left) == pool and all(c["State"] == "running" for c in left), left


@pytest.mark.parametrize("sandbox", ["cold", "warm"], indirect=True)
def test_stdout_stderr_traceback_and_exit_code(sandbox: SandboxProcess, receiver: CallbackReceiver) -> None:
    failing = run(sandbox, receiver, 102, "print('before')\nraise KeyError('missing')\n")
    assert failing["return_code"] == 1 and failing["success"] is False
    assert failing["output"].startswith("before\nTraceback (most recent call last):\n")
    assert 'File "/scripts/index.py", line 2, in <module>' in failing["output"]
    assert failing["output"].endswith("KeyError: 'missing'\n")
    exit3 = run(sandbox, receiver, 103, "import sys\nprint('x', file=sys.stderr)\nsys.exit(3)\n")
    assert exit3["return_code"] == 3 and exit3["output"] == "x\n" and exit3["success"] is False


@pytest.mark.parametrize("sandbox", ["cold", "warm"], indirect=True)
def test_memory_bomb_is_out_of_memory(sandbox: SandboxProcess, receiver: CallbackReceiver) -> None:
    script = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))\n"
    result = run(sandbox, receiver, 104, script)
    assert result["success"] is False
    assert result["return_code"] == 137
    assert texts.OUT_OF_MEMORY.format(limit="512 MiB") in result["output"]


@pytest.mark.parametrize("path", ["cold", "warm"])
def test_fork_bomb_is_contained(sandbox_factory: Any, receiver: CallbackReceiver, path: str) -> None:
    # Its own sandbox: the bomb holds every process its run may have while the pool refills.
    sandbox = sandbox_factory(PYTHON_SANDBOX_WARM_POOL=PATHS[path])
    script = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = run(sandbox, receiver, 105, script)
    assert result["success"] is False
    assert texts.TIME_LIMIT.format(seconds=5) in result["output"]
    assert sandbox.health()["status"] == "ok"
    assert run(sandbox, receiver, 106, "print('still fine')")["output"] == "still fine\n"


@pytest.mark.parametrize("sandbox", ["cold", "warm"], indirect=True)
@pytest.mark.parametrize("script", ["while True: pass", "import time\ntime.sleep(10**6)"])
def test_time_limit(sandbox: SandboxProcess, receiver: CallbackReceiver, script: str) -> None:
    script_id = 107 if "pass" in script else 108
    started = time.monotonic()
    result = run(sandbox, receiver, script_id, script)
    elapsed = time.monotonic() - started
    assert result["output"].endswith(texts.notice(texts.TIME_LIMIT.format(seconds=5)))
    assert result["return_code"] == -1 and result["success"] is False
    assert 5 <= result["spend_time"] < 8
    assert elapsed < 15


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("pool", ["0", "2"], ids=["cold", "warm"])
def test_chatty_script_runs_on_past_the_output_limit(sandbox_factory: Any, receiver: CallbackReceiver,
                                                     pool: str) -> None:
    """As upstream: the script finishes, only the limit's worth is kept, success follows the exit code."""
    sandbox = sandbox_factory(PYTHON_RUNNER_OUTPUT_LIMIT="100000", PYTHON_PROCESS_TIMEOUT="60",
                              PYTHON_SANDBOX_WARM_POOL=pool)
    run(sandbox, receiver, 109, "print('warm-up')")
    before = rss_kib(sandbox.worker_pid())
    # 50 MB, then a line that proves the script ran to its end.
    script = ("import sys\nfor _ in range(800):\n    sys.stdout.write('y' * 65536)\n"
              "open('/tmp/done', 'w').write('end')\nprint(open('/tmp/done').read(), file=sys.stderr)\n")
    result = run(sandbox, receiver, 110, script)
    notice = texts.notice(texts.OUTPUT_LIMIT.format(limit=100000))
    assert result["output"] == "y" * 100000 + notice
    assert result["success"] is True and result["return_code"] == 0
    growth = rss_kib(sandbox.worker_pid()) - before
    assert growth < 20 * 1024, f"sandbox RSS grew by {growth} KiB"
    failing = run(sandbox, receiver, 111, "import sys\nsys.stdout.write('z' * 200000)\nsys.exit(4)\n")
    assert failing["output"] == "z" * 100000 + notice
    assert failing["success"] is False and failing["return_code"] == 4


def test_the_time_limit_still_ends_a_chatty_script(sandbox_factory: Any, receiver: CallbackReceiver) -> None:
    sandbox = sandbox_factory(PYTHON_RUNNER_OUTPUT_LIMIT="1000")
    result = run(sandbox, receiver, 112, "import time\nwhile True:\n    print('x' * 100)\n    time.sleep(0.001)\n")
    assert result["output"].endswith(texts.notice(texts.OUTPUT_LIMIT.format(limit=1000))
                                     + texts.notice(texts.TIME_LIMIT.format(seconds=5)))
    assert result["success"] is False and result["return_code"] == -1


@pytest.mark.parametrize("sandbox", ["cold", "warm"], indirect=True)
def test_tmp_is_capped_and_root_read_only(sandbox: SandboxProcess, receiver: CallbackReceiver,
                                         sandbox_user: Any, podman: PodmanAPI, tmp_path: Path) -> None:
    storage = sandbox_user.home / ".local/share/containers"
    since = tmp_path / "since"
    since.touch()
    runner_uids = runner_host_uids(podman)
    script = (
        "import errno\n"
        "try:\n"
        "    with open('/tmp/big', 'wb') as f:\n"
        "        for _ in range(1024):\n"
        "            f.write(b'z' * (1 << 20))\n"
        "    print('wrote 1 GB')\n"
        "except OSError as e:\n"
        "    print('tmp:', errno.errorcode[e.errno])\n"
        "try:\n"
        "    open('/evil', 'w')\n"
        "except OSError as e:\n"
        "    print('root:', e.strerror)\n"
        "print([l.split()[2] for l in open('/proc/mounts') if l.split()[1] == '/tmp'])\n"
    )
    result = run(sandbox, receiver, 111, script)
    lines = result["output"].splitlines()
    assert lines[0] in ("tmp: ENOSPC", "tmp: EFBIG"), result["output"]
    assert lines[1] == "root: Read-only file system"
    assert lines[2] == "['tmpfs']"  # in memory, capped: never the host's disk
    written = bytes_written(storage, since, runner_uids)
    assert written < 10 << 20, "the runner's writes reached the sandbox user's storage"


def runner_host_uids(podman: PodmanAPI) -> range:
    """The host uids a runner's files can have: a run's uid (RUN_UID_FIRST and up) under either mapping (the
    fixed one, or Podman's default that puts container uid 1 on the first subordinate id)."""
    mapping = IdMapping.from_podman_info(podman.client.info())
    return range(mapping.host_first + RUN_UID_FIRST - 1, mapping.host_first + mapping.size)


def bytes_written(path: Path, since: Path, uids: range) -> int:
    """Bytes in files under `path` changed after `since` and owned by one of `uids`: what runners left there.

    Not the size of the whole storage: other workers and other workloads of the sandbox user build images and
    run containers meanwhile; a runner's own files always carry its run uid.
    """
    out = subprocess.run(["find", str(path), "-xdev", "-type", "f", "-newer", str(since), "-printf", "%U %s\\n"],
                         capture_output=True, text=True, check=False).stdout
    return sum(int(size) for uid, size in (line.split() for line in out.splitlines()) if int(uid) in uids)


@pytest.mark.parametrize("sandbox", ["cold", "warm"], indirect=True)
def test_runner_reaches_no_address(sandbox: SandboxProcess, receiver: CallbackReceiver) -> None:
    host_port = sandbox.port
    script = (
        "import socket\n"
        f"for host, port in [('127.0.0.1', {host_port}), ('127.0.0.1', {receiver.port}), ('10.0.2.2', {host_port})]:\n"
        "    s = socket.socket()\n"
        "    s.settimeout(2)\n"
        "    try:\n"
        "        s.connect((host, port)); print('connected', host, port)\n"
        "    except OSError as e:\n"
        "        print('refused', host, e.__class__.__name__)\n"
        "import os\n"
        "print(sorted(os.listdir('/sys/class/net')))\n"
    )
    result = run(sandbox, receiver, 112, script)
    assert "connected" not in result["output"], result["output"]
    # The open network (the default): an interface, and this host refused through it.
    assert result["output"].splitlines()[-2:] == [
        "['lo', 'tap0']", f"[egress refused: 10.0.2.2:{host_port} (this host's loopback)]"], result["output"]


@pytest.mark.parametrize("sandbox", ["cold", "warm"], indirect=True)
def test_concurrent_runs_do_not_see_each_others_tokens(sandbox: SandboxProcess,
                                                       receiver: CallbackReceiver) -> None:
    # The other run's token is derived here, so it is in neither this script nor its environment.
    script = (
        "import os, time, glob\n"
        "mine = os.environ['api_token']\n"
        "other = mine[:-1] + chr(ord(mine[-1]) ^ 3)\n"
        "time.sleep(1.5)\n"
        "blob = b''\n"
        "for path in glob.glob('/proc/[0-9]*/environ') + glob.glob('/proc/[0-9]*/cmdline'):\n"
        "    try: blob += open(path, 'rb').read()\n"
        "    except OSError: pass\n"
        "for root, dirs, files in os.walk('/tmp'):\n"
        "    for f in files:\n"
        "        try: blob += open(os.path.join(root, f), 'rb').read()\n"
        "        except OSError: pass\n"
        "print(mine, other, other.encode() in blob, len(glob.glob('/proc/[0-9]*')))\n"
    )
    for script_id, token in ((113, "token-A"), (114, "token-B")):
        assert sandbox.run(script_id, script, env={"api_token": token}).status_code == 202
    a, b = receiver.result(113), receiver.result(114)
    # Two processes: its own, and pid 1 (the entrypoint that reports its exit; it never holds the job).
    assert a["output"] == "token-A token-B False 2\n"
    assert b["output"] == "token-B token-A False 2\n"


def test_slots_busy_gives_429_and_duplicate_gives_409(sandbox_factory: Any, receiver: CallbackReceiver) -> None:
    sandbox = sandbox_factory(PYTHON_STARTER_THREAD_COUNT="2")
    slow = "import time\ntime.sleep(2)\n"
    assert sandbox.run(120, slow).status_code == 202
    duplicate = sandbox.run(120, slow)
    assert duplicate.status_code == 409 and "120" in duplicate.json()["error"]
    assert sandbox.run(121, slow).status_code == 202
    busy = sandbox.run(122, slow)
    assert busy.status_code == 429
    assert busy.headers["Retry-After"] == "1"
    assert busy.json() == {"error": "every slot is busy"}
    assert sandbox.health()["slots"] == {"total": 2, "busy": 2, "free": 0}
    receiver.result(120)
    receiver.result(121)
    assert 122 not in receiver.results()


def run_state(sandbox: SandboxProcess, script_id: int) -> tuple[int, Any]:
    response = requests.get(f"{sandbox.url}/function/runs/{script_id}",
                            headers={"Authorization": f"Token {sandbox.token}"}, timeout=10)
    return response.status_code, response.json()


def test_results_wait_for_the_scheduler(sandbox_factory: Any, receiver: CallbackReceiver) -> None:
    sandbox = sandbox_factory(PYTHON_SANDBOX_WARM_POOL="2")  # its own: runs_finished counts from 0
    receiver.stop()
    assert run_state(sandbox, 130)[0] == 404
    for script_id in (130, 131):
        assert sandbox.run(script_id, f"print('r{script_id}')").status_code == 202
    deadline = time.monotonic() + 20
    while sandbox.health()["runs_finished"] < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sandbox.health()["outbox"]["pending"] >= 2
    assert run_state(sandbox, 130) == (200, {"script_id": 130, "state": "reporting"})
    receiver.start()
    assert receiver.result(130, timeout=60)["output"] == "r130\n"
    assert receiver.result(131, timeout=60)["output"] == "r131\n"
    deadline = time.monotonic() + 10
    while run_state(sandbox, 131)[1]["state"] != "done":  # acknowledged: a tombstone
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert sandbox.run(131, "print('again')").json() == {"error": "script_id 131 is already here", "state": "done"}


def test_sigkill_mid_run_reports_sandbox_lost(sandbox_factory: Any, receiver: CallbackReceiver,
                                              podman: PodmanAPI) -> None:
    sandbox = sandbox_factory(PYTHON_PROCESS_TIMEOUT="60")  # cold: exactly one container
    assert sandbox.run(140, "import time\nprint('started')\ntime.sleep(120)\n").status_code == 202
    deadline = time.monotonic() + 20
    while not any(c.path == "/script-running-callback/" for c in receiver.received):
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.05)
    assert len(ours(podman, sandbox)) == 1
    assert run_state(sandbox, 140) == (200, {"script_id": 140, "state": "running"})
    sandbox.stop(signal.SIGKILL)
    assert len(ours(podman, sandbox)) == 1  # the orphan outlives the service
    assert 140 not in receiver.results()
    sandbox.start()
    result = receiver.result(140, timeout=30)
    assert result["output"] == texts.SANDBOX_LOST
    assert result["success"] is False and result["return_code"] is None
    assert result["lost"] is True  # the scheduler does not count a run without a result of its own
    assert ours(podman, sandbox) == []


def test_bad_input_over_real_http(sandbox: SandboxProcess) -> None:
    """Smoke test of the validation through gunicorn; every case runs in process in test_api_validation.py."""
    headers = {"Authorization": f"Token {sandbox.token}", "Content-Type": "application/json"}
    for data in (b"{nope", json.dumps({"script_id": -1, "script_content": "x", "env": {},
                                                     "callback_secret": secret_for(1)}).encode()):
        response = requests.post(sandbox.url + "/function/run-python", data=data, headers=headers, timeout=10)
        assert response.status_code == 400, response.text
        assert isinstance(response.json()["error"], str) and response.json()["error"]
        assert "Traceback" not in response.text
    body = {"script_id": 9, "script_content": "print(1)", "env": {}}
    assert sandbox.post(body, token="wrong").status_code == 403
    assert sandbox.post(body, token="").json() == {"error": "invalid or missing token"}
    huge = requests.post(sandbox.url + "/function/run-python", data=b"x" * (5 << 20), headers=headers, timeout=30)
    assert huge.status_code == 413
    assert sandbox.health()["status"] == "ok"


def test_upstream_probes_and_health(sandbox: SandboxProcess) -> None:
    assert requests.get(sandbox.url + "/ping/", timeout=5).text == "Pong"
    assert requests.get(sandbox.url + "/_/health", timeout=5).status_code == 200
    health = sandbox.health()
    assert health["slots"] == {"total": 4, "busy": 0, "free": 4}
    assert health["image"].startswith("localhost/seatable-python-runner:")
    assert health["limits"]["memory"] in ("cgroup", "rlimit")
    assert health["limits"]["pids"] in ("cgroup", "rlimit")


def test_script_url_is_fetched_once(sandbox: SandboxProcess, receiver: CallbackReceiver) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    fetches: list[str] = []

    class Files(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetches.append(self.path)
            ok = self.path == "/files/once.py" and len(fetches) == 1
            payload = b"print('from url')" if ok else b"gone"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        # The file server is the run's own SeaTable server: the download's egress check lets it through.
        ok = sandbox.post({"script_id": 150, "script_url": base + "/files/once.py", "env": {"dtable_web_url": base}})
        assert ok.status_code == 202
        assert receiver.result(150)["output"] == "from url\n"
        missing = sandbox.post({"script_id": 151, "script_url": base + "/files/missing.py",
                                "env": {"dtable_web_url": base}})
        assert missing.status_code == 202
        failed = receiver.result(151)
        assert failed["output"] == texts.FAIL_TO_GET_SCRIPT and failed["return_code"] is None
        assert fetches == ["/files/once.py", "/files/missing.py"]
    finally:
        server.shutdown()
