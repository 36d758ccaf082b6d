"""The rootless Podman host and runner image (prepared by ./dev setup), and the sandbox service.

The sandbox runs as the unprivileged sandbox user from the installed virtualenv, exactly as
in production; tests talk to it over real HTTP and receive its callbacks on a real server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from pipeline_contract.schemas import RESULT_CALLBACK, RUNNING_CALLBACK
from sandbox.driver import LABEL
from sandbox.host import SandboxUser, configured_user, lookup_user, socket_alive, start_api_service
from sandbox.image import default_image
from sandbox.podman_api import PodmanAPI
from tests.support.harness import children

START_SECS = 120
VENV_BIN = Path(os.environ.get("SEATABLE_PIPELINE_PREFIX", "/opt/seatable-pipeline")) / "venv" / "bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def sandbox_account() -> SandboxUser:
    """The sandbox user as host-setup (./dev setup) made it; nothing started."""
    return lookup_user(configured_user())


@pytest.fixture(scope="session")
def sandbox_user(sandbox_account: SandboxUser) -> SandboxUser:
    """The sandbox user with its Podman API service answering."""
    user = sandbox_account
    if not socket_alive(user):
        start_api_service(user)  # a previous test run or session may have stopped it
    return user


@pytest.fixture(scope="session")
def podman(sandbox_user: SandboxUser) -> Iterator[PodmanAPI]:
    api = PodmanAPI(sandbox_user.socket_url)
    yield api
    api.close()


@pytest.fixture(scope="session")
def runner_image(podman: PodmanAPI) -> str:
    image = default_image()
    assert podman.image_exists(image), f"{image} missing: ./dev setup builds it"
    return image


# --- a Podman API service of the sandbox user's own, which a test may kill ---------------

@dataclass
class PodmanService:
    """`podman system service --time=0` as the sandbox user on a private socket, started as sandbox.host starts
    the shared one: killing it (SIGKILL, as a crash) touches no other checkout's service; the containers it
    started run on under their conmon. The chaos and cluster harnesses and the Podman-restart tests use it;
    `wrap` runs it elsewhere (a sandbox host's network namespace) instead of `runuser`."""

    user: SandboxUser
    name: str
    log_path: Path
    wrap: Callable[[list[str]], list[str]] | None = None
    start_secs: float = 90
    process: subprocess.Popen[bytes] | None = None
    nodes: list[str] = field(default_factory=list)  # sandboxes a test pointed at it: whose runners it removes

    @property
    def socket(self) -> Path:
        return self.user.runtime_dir / f"podman-{self.name}" / "podman.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> PodmanService:
        directory = self.socket.parent
        directory.mkdir(parents=True, exist_ok=True)
        os.chown(directory, self.user.uid, self.user.gid)
        self.socket.unlink(missing_ok=True)  # left by a killed service
        argv = ["podman", "system", "service", "--time=0", self.url]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.wrap(argv) if self.wrap else self.user.command(argv),
                env=self.user.env(), cwd="/", stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        api = PodmanAPI(self.url, timeout=5)
        try:
            deadline = time.monotonic() + self.start_secs
            while not (self.socket.exists() and api.ping()):
                if not self.running or time.monotonic() > deadline:
                    raise RuntimeError(f"the private Podman API service {self.name} did not start "
                                       f"(log: {self.log_path})")
                time.sleep(0.1)
        finally:
            api.close()
        return self

    def kill(self) -> None:
        """SIGKILL the service process itself (runuser's child, or the process started when `wrap` execs), not
        its containers' conmon."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        for pid in _podman_pids(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=30)

    def containers(self, node: str) -> list[str]:
        """The node's runner containers (by its label), whatever their state."""
        api = PodmanAPI(self.url)
        try:
            return [str(c["Id"]) for c in api.labelled(f"{LABEL}={node}")]
        finally:
            api.close()

    def remove_containers(self, node: str) -> None:
        """Remove what the node left behind (after counting it), so no other checkout finds it."""
        api = PodmanAPI(self.url)
        try:
            for container in self.containers(node):
                api.remove(container)
        finally:
            api.close()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.socket.parent, ignore_errors=True)


def _podman_pids(pid: int) -> list[int]:
    """`pid` when it is podman itself, else its children (runuser stays in between)."""
    try:
        if Path(f"/proc/{pid}/comm").read_text().strip() == "podman":
            return [pid]
    except OSError:
        return []
    return children(pid) or [pid]


# --- a scheduler stand-in that records the sandbox's callbacks --------------------------

# What the sandbox must send on each path: the contract's callbacks, closed (no field the contract does not name).
CALLBACKS = {"/script-running-callback/": RUNNING_CALLBACK.closed(), "/script-result/": RESULT_CALLBACK.closed()}


@dataclass
class Callback:
    path: str
    auth: str
    body: dict[str, Any]
    status: int = 200
    size: int = 0
    breaches: list[str] = field(default_factory=list)  # where the body breaks the contract (pipeline_contract)


@dataclass
class CallbackReceiver:
    """A real HTTP server for /script-running-callback/ and /script-result/; can go down and up.

    Like the scheduler it can refuse: `token` (401 for any other), `max_body` (413 above it, as
    PYTHON_SCHEDULER_MAX_BODY_BYTES does), or `answer(path, body)` for any status. `received`
    holds the acknowledged (2xx) callbacks, `attempts` every one.
    """

    port: int = field(default_factory=free_port)
    received: list[Callback] = field(default_factory=list)
    attempts: list[Callback] = field(default_factory=list)
    token: str = ""  # "" accepts any
    max_body: int = 0  # 0: no limit
    answer: Callable[[str, dict[str, Any]], int] | None = None
    _server: ThreadingHTTPServer | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status_for(self, path: str, auth: str, raw: bytes, body: dict[str, Any]) -> int:
        if self.token and auth != f"Token {self.token}":
            return 401
        if self.max_body and len(raw) > self.max_body:
            return 413
        return self.answer(path, body) if self.answer is not None else 200

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                auth = self.headers.get("Authorization", "")
                status = receiver.status_for(self.path, auth, raw, body)
                contract = CALLBACKS.get(self.path)
                breaches = contract.problems(body) if contract is not None else [f"{self.path}: no such callback"]
                call = Callback(self.path, auth, body, status, len(raw), breaches)
                with receiver._cond:
                    receiver.attempts.append(call)
                    if 200 <= status < 300:
                        receiver.received.append(call)
                    receiver._cond.notify_all()
                payload = b'{"success": true}' if status < 300 else b'{"error_msg": "refused"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def results(self) -> dict[int, dict[str, Any]]:
        with self._cond:
            return {c.body["script_id"]: c.body for c in self.received if c.path == "/script-result/"}

    def breaches(self) -> list[str]:
        """Every way a callback that arrived broke the contract ([] when all kept it)."""
        with self._cond:
            return [f"{c.path} {c.body.get('script_id')}: {b}" for c in self.attempts for b in c.breaches]

    def tries(self, script_id: int, path: str | None = "/script-result/") -> list[Callback]:
        """Every attempt to deliver this script's callbacks on `path` (None: any), acknowledged or not."""
        with self._cond:
            return [c for c in self.attempts
                    if (path is None or c.path == path) and c.body.get("script_id") == script_id]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"not within {timeout} s")
                self._cond.wait(remaining)

    def result(self, script_id: int, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for c in self.received:
                    if c.path == "/script-result/" and c.body.get("script_id") == script_id:
                        return c.body
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no result for script {script_id} within {timeout} s")
                self._cond.wait(remaining)


    def clear(self) -> None:
        """Forget what arrived and listen again (a test may have stopped it): as good as a new receiver."""
        with self._cond:
            self.received.clear()
        if self._server is None:
            self.start()


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    rec = CallbackReceiver()
    rec.start()
    yield rec
    rec.stop()
    assert rec.breaches() == [], "the sandbox's callbacks broke the contract"


# --- the sandbox service, as the sandbox user --------------------------------------------

def secret_for(script_id: int) -> str:
    """The callback secret the tests hand each run (the dispatcher issues a random one)."""
    return f"run-{script_id}-callback-secret-of-the-tests"


@dataclass
class SandboxProcess:
    user: SandboxUser
    env: dict[str, str]
    port: int
    state_dir: Path
    token: str = "sandbox-test-token"
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    tls_ca: str | None = None  # serving HTTPS (PYTHON_SANDBOX_TLS_*): the CA that verifies it, at localhost
    client_cert: tuple[str, str] | None = None  # presented when the node requires client certificates
    venv_bin: Path = VENV_BIN  # another prefix's sandbox (a benchmark's side-by-side run of an older commit)

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}" if self.tls_ca else f"http://127.0.0.1:{self.port}"

    @property
    def _tls(self) -> dict[str, Any]:
        return {"verify": self.tls_ca, "cert": self.client_cert} if self.tls_ca else {}

    def start(self) -> None:
        self.log_path = self.state_dir.parent / f"sandbox-{int(time.time() * 1000)}.log"
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            self.user.command([str(self.venv_bin / "seatable-sandbox"), "serve"]),
            env={**self.user.env(), **self.env}, cwd="/", stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        # The worker boots before it answers: a runner probe, the id-mapped image copy, the network helper.
        # On a loaded machine that is tens of seconds; a sandbox that dies at start is seen at once.
        deadline = time.monotonic() + START_SECS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"sandbox exited at start:\n{self.log()}")
            try:
                if requests.get(self.url + "/ping/", timeout=5, **self._tls).status_code == 200:
                    return
            except requests.RequestException:  # not listening yet, or the worker still booting
                time.sleep(0.1)
        self.stop()  # no caller holds it yet: left running, it would outlive the test
        raise AssertionError(f"sandbox did not answer within {START_SECS} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: the graceful stop, as systemd asks the service; SIGKILL: the whole session, a crash."""
        if self.process is None or self.process.poll() is not None:
            return
        if sig == signal.SIGKILL:
            os.killpg(self.process.pid, sig)
        else:
            # To the service (runuser's child), not runuser: runuser SIGKILLs its child two seconds after passing
            # on a SIGTERM of its own, which cut the graceful stop (runners left behind) on a busy machine.
            under_runuser = Path(f"/proc/{self.process.pid}/comm").read_text().strip() == "runuser"
            for pid in (children(self.process.pid) if under_runuser else []) or [self.process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def worker_pid(self) -> int:
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        # runuser -> gunicorn master -> worker
        for pid in children:
            grand = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if grand:
                return int(grand[0])
        raise AssertionError("no gunicorn worker found")

    def post(self, body: Any, token: str | None = None, **kwargs: Any) -> requests.Response:
        """POST a run; a body without a callback secret gets the test's one for its script_id (secret_for)."""
        headers = {"Authorization": f"Token {self.token if token is None else token}"}
        if isinstance(body, dict) and isinstance(body.get("script_id"), int) and "callback_secret" not in body:
            body = {**body, "callback_secret": secret_for(body["script_id"])}
        return requests.post(self.url + "/function/run-python", json=body, headers=headers, timeout=10,
                             **{**self._tls, **kwargs})

    def run(self, script_id: int, script: str, env: dict[str, str] | None = None,
            context: Any = None) -> requests.Response:
        return self.post({"script_id": script_id, "script_content": script, "env": env or {},
                          "context_data": context})

    def health(self) -> dict[str, Any]:
        """The /health report (also when it answers 503: the body says why)."""
        result: dict[str, Any] = requests.get(self.url + "/health", timeout=10, **self._tls).json()
        return result

    def ready(self) -> tuple[int, dict[str, Any]]:
        response = requests.get(self.url + "/ready", timeout=10, **self._tls)
        return response.status_code, response.json()

    def state(self, script_id: int) -> tuple[int, Any]:
        """GET /function/runs/{id}: (status, body)."""
        response = requests.get(f"{self.url}/function/runs/{script_id}",
                                headers={"Authorization": f"Token {self.token}"}, timeout=10, **self._tls)
        return response.status_code, response.json()


    def wait_ready(self, timeout: float = 120) -> None:
        """Until no slot is busy and the warm pool is full of runners done with their pre-imports: the warm
        path as designed. (The pool hands out a runner still importing too, and on a busy machine that import
        alone can outlast the tests' 5 s time limit.)"""
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            pool = health["warm_pool"]
            if min(pool["idle"], pool["ready"]) >= pool["target"] and health["slots"]["busy"] == 0:
                return
            assert time.monotonic() < deadline, f"the sandbox did not settle: {health['slots']}, {pool}"
            time.sleep(0.1)


class SandboxStarter:
    """Starts sandboxes as the sandbox user, each with its own state dir and port; stops them all at the end."""

    def __init__(self, user: SandboxUser, receiver: CallbackReceiver) -> None:
        self.user = user
        self.receiver = receiver
        self.started: list[SandboxProcess] = []
        self.by_path: dict[str, SandboxProcess] = {}  # shared_sandbox's, one per path
        self.base = Path(tempfile.mkdtemp(prefix="sandbox-test-"))
        self.base.chmod(0o755)

    def __call__(self, tls_ca: str | None = None, client_cert: tuple[str, str] | None = None,
                 **overrides: str) -> SandboxProcess:
        state = Path(tempfile.mkdtemp(dir=self.base, prefix="state-"))  # a start that failed keeps its own
        state.chmod(0o755)
        os.chown(state, self.user.uid, self.user.gid)
        port = free_port()
        env = {
            "PYTHON_SANDBOX_AUTH_TOKEN": "sandbox-test-token",
            "PYTHON_SCHEDULER_URL": self.receiver.url,
            "PYTHON_SANDBOX_BIND": f"127.0.0.1:{port}",
            "PYTHON_SANDBOX_STATE_DIR": str(state),
            "PYTHON_SANDBOX_NODE_NAME": f"test-{port}",
            "PYTHON_PROCESS_TIMEOUT": "5",
            "PYTHON_STARTER_THREAD_COUNT": "4",
            "PYTHON_RUNNER_CONTAINER_MEMORY": "512m",
            "PYTHON_SANDBOX_WARM_POOL": "0",
            **overrides,
        }
        proc = SandboxProcess(self.user, env, port, state, tls_ca=tls_ca, client_cert=client_cert)
        proc.start()
        self.started.append(proc)
        proc.wait_ready()  # measure the warm path, not a miss
        return proc

    def shared(self, path: str) -> SandboxProcess:
        """This starter's sandbox on `path` ("warm" or "cold"), started at the first call, idle with a full pool.

        A test that stopped or killed it, or left it unable to settle, gets a new one at the next call.
        """
        proc = self.by_path.get(path)
        if proc is not None and proc.process is not None and proc.process.poll() is None:
            try:
                proc.wait_ready(timeout=30)
                return proc
            except AssertionError:
                # Not as a new one would be (e.g. a pooled runner that never finished its imports): replace it.
                proc.stop()
        proc = self.by_path[path] = self(PYTHON_SANDBOX_WARM_POOL=PATHS[path])
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            proc.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def sandbox_factory(sandbox_user: SandboxUser, runner_image: str, receiver: CallbackReceiver,
                    ) -> Iterator[Any]:
    starter = SandboxStarter(sandbox_user, receiver)
    yield starter
    starter.stop_all()


PATHS = {"cold": "0", "warm": "2"}


@pytest.fixture
def sandbox(sandbox_factory: Any, request: pytest.FixtureRequest) -> SandboxProcess:
    """A sandbox on the warm path (the default) or, parametrized indirectly, on "cold"."""
    path = getattr(request, "param", "warm")
    proc: SandboxProcess = sandbox_factory(PYTHON_SANDBOX_WARM_POOL=PATHS[path])
    return proc


# --- one sandbox per path for a whole module ---------------------------------------------
# Starting a sandbox (gunicorn as the sandbox user, a warm pool of runners importing pandas) takes seconds;
# a module whose tests leave the sandbox as they found it (their runs end, their ids differ) shares one per
# path: it overrides `receiver` with `shared_receiver` and `sandbox` with `module_sandboxes.shared(path)`.

@pytest.fixture(scope="module")
def module_receiver() -> Iterator[CallbackReceiver]:
    rec = CallbackReceiver()
    rec.start()
    yield rec
    rec.stop()
    assert rec.breaches() == [], "the sandbox's callbacks broke the contract"


@pytest.fixture(scope="module")
def module_sandboxes(sandbox_user: SandboxUser, runner_image: str, module_receiver: CallbackReceiver,
                     ) -> Iterator[SandboxStarter]:
    starter = SandboxStarter(sandbox_user, module_receiver)
    yield starter
    starter.stop_all()


@pytest.fixture
def shared_receiver(module_receiver: CallbackReceiver) -> CallbackReceiver:
    """The module's receiver, emptied and listening: as a new one would be."""
    module_receiver.clear()
    return module_receiver
