"""The whole pipeline as real processes that faults can kill, stop and start again.

MariaDB (a private server), the SeaTable stand-in (in this process), a Podman API service of the sandbox user
on a private socket (so killing it touches no other checkout's runs), the sandbox as the sandbox user on
rootless Podman, a reset proxy between dispatcher and sandbox, the scheduler under gunicorn and
`seatable-scheduler dispatch --maintain`. Ports, state directory and node name stay the same across restarts,
as on a real host; every process is started here and only those are signalled.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pymysql

from sandbox.host import SandboxUser, configured_user, lookup_user
from tests.chaos.proxy import ResetProxy
from tests.seatable_stub import StubServer
from tests.support.harness import answers, children, log_tails, wait_until
from tests.support.mariadb import MariaDBServer, start_server
from tests.support.pipeline import REPO, Service
from tests.support.podman import PodmanService, SandboxProcess, free_port

Say = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    """Timing of the pipeline under test; the quick form shortens the windows, never skips one."""

    slots: int = 4
    process_timeout: int = 60
    handoff_secs: int = 15
    lost_grace_secs: int = 20
    sweep_interval: int = 2
    max_body_bytes: int = 8 << 20
    warm_pool: int = 2


@dataclass
class Chaos:
    settings: Settings = field(default_factory=Settings)
    say: Say = print
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    sandbox_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    tag: str = field(default_factory=lambda: secrets.token_hex(4))
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="chaos-")))
    scheduler_port: int = field(default_factory=free_port)
    sandbox_port: int = field(default_factory=free_port)
    mariadb: MariaDBServer | None = None
    stub: StubServer | None = None
    proxy: ResetProxy | None = None
    user: SandboxUser | None = None
    podman: PodmanService | None = None
    sandbox: SandboxProcess | None = None
    scheduler: Service | None = None
    dispatcher: Service | None = None

    @property
    def node_name(self) -> str:
        return f"chaos-{self.tag}"

    @property
    def scheduler_url(self) -> str:
        return f"http://127.0.0.1:{self.scheduler_port}"

    @property
    def podman_url(self) -> str:
        assert self.podman is not None
        return self.podman.url

    # --- the whole pipeline -------------------------------------------------------------------------------

    def start(self) -> Chaos:
        self.workdir.chmod(0o755)
        self.user = lookup_user(configured_user())
        self.say("chaos: starting MariaDB, the SeaTable stand-in and a private Podman API service")
        self.podman = PodmanService(self.user, f"chaos-{self.tag}", self.workdir / "podman-service.log")
        self.mariadb = start_server(("--innodb-buffer-pool-size=64M",))
        self.stub = StubServer(self.secret, host="127.0.0.1").start()
        self.start_podman_service()
        self.say("chaos: starting the sandbox (as the sandbox user), the reset proxy, the scheduler, the dispatcher")
        self.start_sandbox()
        self.proxy = ResetProxy(self.sandbox_port).start()
        self._scheduler_cli("migrate")
        self.start_scheduler()
        self.start_dispatcher()
        return self

    def stop(self, keep_workdir: bool = False) -> None:
        for service in (self.dispatcher, self.scheduler):
            if service is not None:
                service.stop()
        if self.sandbox is not None:
            self.sandbox.stop()
        if self.proxy is not None:
            self.proxy.stop()
        if self.podman is not None:
            if self.podman.running:
                self.remove_containers()
            self.podman.stop()
        if self.stub is not None:
            self.stub.stop()
        if self.mariadb is not None:
            self.mariadb.stop()
        if not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Chaos:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs(self, lines: int = 40) -> str:
        """The tail of every log, for a report on what went wrong."""
        return log_tails(self.workdir, lines)

    # --- scheduler and dispatcher ------------------------------------------------------------------------

    def scheduler_env(self) -> dict[str, str]:
        assert self.mariadb is not None and self.stub is not None and self.proxy is not None
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PYTHON_", "SEATABLE_"))}
        env.update({
            "PYTHONPATH": str(REPO),
            "PYTHON_SCHEDULER_AUTH_TOKEN": self.secret,
            "SEATABLE_SERVER_URL": self.stub.url,
            "PYTHON_SCHEDULER_URL": self.scheduler_url,
            "PYTHON_SCHEDULER_BIND_HOST": "127.0.0.1",
            "PYTHON_SCHEDULER_PORT": str(self.scheduler_port),
            "PYTHON_SCHEDULER_WORKERS": "2",
            "PYTHON_SANDBOX_URLS": self.proxy.url,
            "PYTHON_SANDBOX_AUTH_TOKEN": self.sandbox_token,
            "PYTHON_PROCESS_TIMEOUT": str(s.process_timeout),
            "PYTHON_DISPATCH_HANDOFF_SECS": str(s.handoff_secs),
            "PYTHON_SANDBOX_LOST_GRACE_SECS": str(s.lost_grace_secs),
            "PYTHON_SWEEP_INTERVAL_SECS": str(s.sweep_interval),
            "PYTHON_SCHEDULER_MAX_BODY_BYTES": str(s.max_body_bytes),
            # One team sends every run of a fault: faults that hold runs long (Podman away) would otherwise turn the
            # later ones into rate-limit answers, which say nothing about exactly once (the limit has its own tests).
            "PYTHON_SCHEDULER_RATE_LIMIT_PERCENT": "1",
            "PYTHON_SCHEDULER_LOG_LEVEL": "INFO",
            **self.mariadb.settings.env(),
        })
        return env

    def _scheduler_cli(self, *args: str) -> None:
        result = subprocess.run([sys.executable, "-m", "scheduler.cli", *args], cwd=REPO, env=self.scheduler_env(),
                                capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"seatable-scheduler {' '.join(args)} failed:\n{result.stderr[-2000:]}")

    def _spawn(self, name: str, *args: str) -> Service:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen([sys.executable, "-m", "scheduler.cli", *args], cwd=REPO,
                                       env=self.scheduler_env(), stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        return Service(name, process, log)

    def start_scheduler(self) -> None:
        self.scheduler = self._spawn("scheduler", "serve")
        wait_until(lambda: self.scheduler is not None and self.scheduler.process.poll() is None
                   and answers(self.scheduler_url + "/ping/"), 60, "the scheduler's /ping/")

    def stop_scheduler(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()

    def kill_scheduler_worker(self) -> int:
        """SIGKILL one gunicorn worker (the master starts another)."""
        assert self.scheduler is not None
        workers = children(self.scheduler.process.pid)
        assert workers, "the scheduler has no workers"
        os.kill(workers[0], signal.SIGKILL)
        return workers[0]

    def start_dispatcher(self) -> None:
        self.dispatcher = self._spawn("dispatcher", "dispatch", "--maintain")

    def kill_dispatcher(self) -> None:
        assert self.dispatcher is not None
        self.dispatcher.process.send_signal(signal.SIGKILL)
        self.dispatcher.process.wait(timeout=30)

    # --- the sandbox and its Podman -------------------------------------------------------------------

    def start_podman_service(self) -> None:
        assert self.podman is not None
        self.podman.start()

    def kill_podman_service(self) -> None:
        """SIGKILL the API service process itself (not its containers' conmon, which outlive it)."""
        assert self.podman is not None
        self.podman.kill()

    def sandbox_env(self, scheduler_url: str | None = None) -> dict[str, str]:
        s = self.settings
        return {
            "PYTHON_SANDBOX_AUTH_TOKEN": self.sandbox_token,
            "PYTHON_SCHEDULER_URL": scheduler_url or self.scheduler_url,
            "PYTHON_SANDBOX_BIND": f"127.0.0.1:{self.sandbox_port}",
            "PYTHON_SANDBOX_STATE_DIR": str(self.workdir / "sandbox-state"),
            "PYTHON_SANDBOX_NODE_NAME": self.node_name,
            "PYTHON_SANDBOX_PODMAN_URL": self.podman_url,
            "PYTHON_STARTER_THREAD_COUNT": str(s.slots),
            "PYTHON_PROCESS_TIMEOUT": str(s.process_timeout),
            "PYTHON_SCHEDULER_MAX_BODY_BYTES": str(s.max_body_bytes),
            "PYTHON_SANDBOX_WARM_POOL": str(s.warm_pool),
            # The stand-in that counts executions listens on loopback, which runners of the open network never
            # reach; the seatable mode's egress proxy runs on the host and does (as in tests.support.pipeline).
            "PYTHON_RUNNER_NETWORK": "seatable",
        }

    def start_sandbox(self, scheduler_url: str | None = None) -> None:
        """Start (or start again: same port, state directory and node name) the sandbox as the sandbox user."""
        assert self.user is not None
        state = self.workdir / "sandbox-state"
        if not state.exists():
            state.mkdir()
            os.chown(state, self.user.uid, self.user.gid)
        self.sandbox = SandboxProcess(self.user, self.sandbox_env(scheduler_url), self.sandbox_port, state,
                                      token=self.sandbox_token)
        self.sandbox.start()

    def sandbox_running(self) -> bool:
        return self.sandbox is not None and self.sandbox.process is not None and self.sandbox.process.poll() is None

    def stop_sandbox(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: a graceful stop (runs in hand finish, warm runners are removed); SIGKILL: a crash."""
        if self.sandbox is not None:
            self.sandbox.stop(sig)

    def restart_sandbox(self, scheduler_url: str | None = None) -> None:
        self.stop_sandbox()
        self.start_sandbox(scheduler_url)

    def containers(self) -> list[str]:
        """This node's runner containers (by its label), whatever their state."""
        assert self.podman is not None
        return self.podman.containers(self.node_name)

    def remove_containers(self) -> None:
        assert self.podman is not None
        self.podman.remove_containers(self.node_name)

    # --- the database -----------------------------------------------------------------------------------

    def restart_mariadb(self, down_secs: float) -> None:
        assert self.mariadb is not None
        self.mariadb.shutdown()
        time.sleep(down_secs)
        self.mariadb.start_again()

    def query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """One query on the scheduler's database (None-safe for a database that is down: raises)."""
        assert self.mariadb is not None
        connection = self.mariadb.settings.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, args)
                return list(cursor.fetchall())
        finally:
            connection.close()

    def try_query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]] | None:
        try:
            return self.query(sql, args)
        except pymysql.err.MySQLError:
            return None

    def healthy(self) -> list[str]:
        """What is not running as it should (empty when everything is)."""
        problems = []
        for name, service in (("scheduler", self.scheduler), ("dispatcher", self.dispatcher)):
            if service is None or service.process.poll() is not None:
                problems.append(f"{name} not running")
        if not answers(self.scheduler_url + "/health"):
            problems.append("scheduler /health not 200")
        if self.sandbox is None or self.sandbox.process is None or self.sandbox.process.poll() is not None:
            problems.append("sandbox not running")
        elif not answers(self.sandbox.url + "/ping/"):
            problems.append("sandbox /ping/ not answering")
        return problems
