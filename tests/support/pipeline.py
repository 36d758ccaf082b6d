"""The whole pipeline as real processes: SeaTable stand-in, scheduler, dispatcher, sandbox.

Used by `./dev demo` and the end-to-end tests. The scheduler and dispatcher run from this
checkout; the sandbox runs as the unprivileged sandbox user from the installed virtualenv.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from sandbox.host import configured_user, lookup_user
from tests.seatable_stub import StubServer
from tests.seatable_stub.button import RunScriptButton
from tests.support.harness import terminate
from tests.support.podman import SandboxProcess, free_port

REPO = Path(__file__).resolve().parents[2]
Say = Callable[[str], None]


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        terminate(self.process)

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Pipeline:
    """Start with `start()`, use `button()` like a SeaTable user, `stop()` at the end."""

    say: Say = print
    db_env: dict[str, str] = field(default_factory=dict)  # DB_* for MariaDB; empty: SQLite
    sandbox_env: dict[str, str] = field(default_factory=dict)
    scheduler_extra_env: dict[str, str] = field(default_factory=dict)  # for scheduler, dispatcher and migrate
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    sandbox_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pipeline-")))
    stub: StubServer | None = None
    services: list[Service] = field(default_factory=list)
    sandbox: SandboxProcess | None = None
    scheduler_port: int = field(default_factory=free_port)
    repo: Path = REPO  # the checkout the scheduler runs from (benchmarks compare two commits)
    sandbox_venv: Path | None = None  # the sandbox's virtualenv bin directory; None: this prefix's

    @property
    def scheduler_url(self) -> str:
        return f"http://127.0.0.1:{self.scheduler_port}"

    def scheduler_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PYTHON_", "SEATABLE_"))}
        env.update({
            "PYTHONPATH": str(self.repo),
            "PYTHON_SCHEDULER_AUTH_TOKEN": self.secret,
            "SEATABLE_SERVER_URL": self.stub.url if self.stub else "",
            "PYTHON_SCHEDULER_URL": self.scheduler_url,
            "PYTHON_SCHEDULER_BIND_HOST": "127.0.0.1",
            "PYTHON_SCHEDULER_PORT": str(self.scheduler_port),
            "PYTHON_SCHEDULER_WORKERS": "1",
            "PYTHON_SCHEDULER_SQLITE_PATH": str(self.workdir / "scheduler.sqlite3"),
            "PYTHON_SANDBOX_URLS": self.sandbox.url if self.sandbox else "",
            "PYTHON_SANDBOX_AUTH_TOKEN": self.sandbox_token,
            "PYTHON_PROCESS_TIMEOUT": self.sandbox_env.get("PYTHON_PROCESS_TIMEOUT", "60"),
            **self.db_env,
            **self.scheduler_extra_env,
        })
        return env

    def start(self) -> Pipeline:
        self.workdir.chmod(0o755)
        self.say("starting the SeaTable stand-in (dtable-web, dtable-server, API gateway)")
        self.stub = StubServer(self.secret, host="127.0.0.1").start()
        self.say(f"  listening on {self.stub.url}")
        self.say("creating the scheduler's database (seatable-scheduler migrate)")
        self._run_scheduler_cli("migrate")
        self.say("starting the sandbox as the unprivileged user 'seatable-sandbox' (rootless Podman)")
        self.sandbox = self._start_sandbox()
        self.say(f"  listening on {self.sandbox.url}; {self._enforcement()}")
        self.say(f"starting the scheduler API under gunicorn on {self.scheduler_url}")
        self._spawn("scheduler", "serve")
        self._wait_http(self.scheduler_url + "/ping/", "scheduler")
        self.say("starting the dispatcher (seatable-scheduler dispatch --maintain)")
        self._spawn("dispatcher", "dispatch", "--maintain")
        return self

    def _run_scheduler_cli(self, *args: str) -> None:
        result = subprocess.run([sys.executable, "-m", "scheduler.cli", *args], cwd=self.repo,
                                env=self.scheduler_env(), capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"seatable-scheduler {' '.join(args)} failed:\n{result.stderr[-2000:]}")

    def _spawn(self, name: str, *args: str) -> Service:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "scheduler.cli", *args], cwd=self.repo,
                                       env=self.scheduler_env(), stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        service = Service(name, process, log)
        self.services.append(service)
        return service

    def _start_sandbox(self) -> SandboxProcess:
        user = lookup_user(configured_user())
        state = self.workdir / "sandbox"
        state.mkdir()
        os.chown(state, user.uid, user.gid)
        port = free_port()
        env = {
            "PYTHON_SANDBOX_AUTH_TOKEN": self.sandbox_token,
            "PYTHON_SCHEDULER_URL": self.scheduler_url,
            "PYTHON_SANDBOX_BIND": f"127.0.0.1:{port}",
            "PYTHON_SANDBOX_STATE_DIR": str(state),
            "PYTHON_SANDBOX_NODE_NAME": f"pipeline-{port}",
            # The stand-in listens on loopback, which runners of the open network never reach (nor did
            # upstream's); the egress proxy of the seatable mode runs on the host and does.
            "PYTHON_RUNNER_NETWORK": "seatable",
            **self.sandbox_env,
        }
        proc = SandboxProcess(user, env, port, state, token=self.sandbox_token)
        if self.sandbox_venv is not None:
            proc.venv_bin = self.sandbox_venv
        proc.start()
        return proc

    def _enforcement(self) -> str:
        assert self.sandbox is not None
        limits = self.sandbox.health()["limits"]
        return f"memory by {limits['memory']}, processes by {limits['pids']}, network {limits['network']}"

    def _wait_http(self, url: str, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for service in self.services:
                if service.process.poll() is not None:
                    raise RuntimeError(f"{service.name} exited:\n{service.tail()}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not answer on {url} within {timeout:.0f} s")

    def button(self, poll_interval: float = 2.0) -> RunScriptButton:
        return RunScriptButton(self.scheduler_url, self.secret, poll_interval=poll_interval)

    def get(self, path: str, **params: Any) -> Any:
        response = requests.get(self.scheduler_url + path, params=params,
                                headers={"Authorization": f"Token {self.secret}"}, timeout=10)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()
        if self.sandbox is not None:
            self.sandbox.stop()
        if self.stub is not None:
            self.stub.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
