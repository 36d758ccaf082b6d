"""Dispatcher fixtures: the scheduler's databases (reused from tests/scheduler), a SeaTable stand-in with one
script, stub sandbox nodes, and dispatcher processes started from this checkout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pony.orm import db_session

from scheduler import runs
from scheduler.config import Config
from scheduler.db import Store, open_store
from tests.scheduler.conftest import (  # noqa: F401 - fixtures reused, not copied
    REPO,
    TOKEN,
    backend,
    free_port,
    make_env,
    serve,
)
from tests.seatable_stub import StubServer
from tests.seatable_stub.server import ThreadingWSGIServer
from tests.support.stub_sandbox import StubSandbox

SANDBOX_TOKEN = "stub-sandbox-token"
SCRIPT = "hello.py"
SCRIPT_CONTENT = "print('hello from the sandbox')\n"


@pytest.fixture
def db_env(make_env: Callable[..., dict[str, str]]) -> dict[str, str]:  # noqa: F811
    """Environment of the test's migrated, empty database of its backend."""
    return make_env()


@pytest.fixture
def store(db_env: dict[str, str]) -> Iterator[Store]:
    s = open_store(Config.from_env(db_env))
    yield s
    s.disconnect()


@dataclass
class SeaTableStub:
    server: StubServer
    base: str  # dashed uuid, as script_log stores it

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture
def seatable(monkeypatch: pytest.MonkeyPatch) -> Iterator[SeaTableStub]:
    """The SeaTable stand-in on a fixed free port, so a test can stop it and start it again.

    Its listen backlog is raised from socketserver's 5: three dispatchers fetch task files 48 at a time,
    and dropped SYNs would turn into multi-second connect delays on a loaded machine.
    """
    monkeypatch.setattr(ThreadingWSGIServer, "request_queue_size", 256)
    server = StubServer(TOKEN, port=free_port())
    server.start()
    base = server.seatable.add_base()
    server.seatable.add_script(base.uuid, SCRIPT, SCRIPT_CONTENT)
    yield SeaTableStub(server, base.uuid36)
    server.stop()


@pytest.fixture
def node() -> Iterator[StubSandbox]:
    """One stub sandbox node that accepts at once and holds every run (no scheduler to report to)."""
    with StubSandbox(SANDBOX_TOKEN) as stub:
        yield stub


def enqueue(
    store: Store,
    base: str,
    count: int,
    owner: str = "alice@auth.local",
    org_id: int | None = 7,
    script_name: str = SCRIPT,
) -> list[int]:
    return [
        runs.create_run(store, runs.NewRun(base, script_name, owner, org_id, {"row": {"_id": str(i)}}, "manualy"))
        for i in range(count)
    ]


def row(store: Store, run_id: int) -> dict[str, Any]:
    columns = ("state", "output", "success", "attempt", "dispatched_at", "sandbox_node", "started_at", "claimed_by")
    with db_session:
        values = store.db.select(f"SELECT {', '.join(columns)} FROM script_log WHERE id = $i", {"i": run_id})[0]
    return dict(zip(columns, values, strict=True))


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class DispatcherProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_marker(self, point: str, timeout: float = 60) -> list[int]:
        def found() -> list[int] | None:
            for line in self.log().splitlines():
                if line.startswith(f"TEST-PAUSE {point} "):
                    return [int(x) for x in line.split()[2:]]
            assert self.process.poll() is None, f"dispatcher exited:\n{self.log()}"
            return None

        result: list[int] = wait_for(found, timeout, f"{point} marker")
        return result

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


@pytest.fixture
def dispatchers(tmp_path: Path) -> Iterator[Callable[..., DispatcherProcess]]:
    """Start `python -m scheduler.cli dispatch` processes (current source); all are killed after the test."""
    started: list[DispatcherProcess] = []

    def start(env: dict[str, str], *args: str) -> DispatcherProcess:
        full_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PYTHON_"))},
            "PYTHONPATH": str(REPO),
            "PYTHON_SANDBOX_AUTH_TOKEN": SANDBOX_TOKEN,
            "PYTHON_SCHEDULER_LOG_LEVEL": "INFO",
            **env,
        }
        log_path = tmp_path / f"dispatcher-{len(started)}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "scheduler.cli", "dispatch", *args],
                cwd=REPO,
                env=full_env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        started.append(DispatcherProcess(process, log_path))
        return started[-1]

    yield start
    for proc in started:
        if proc.process.poll() is None:
            proc.process.kill()
            proc.process.wait()
