"""Scheduler fixtures: a migrated database on each backend, the app, a stub dtable-web, a real server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import requests
from falcon import testing

from scheduler.app import create_app
from scheduler.config import Config
from scheduler.db import Store, open_store
from tests.support.harness import terminate
from tests.support.mariadb import DatabaseSettings

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-secret-token"
AUTH = {"Authorization": f"Token {TOKEN}"}
BASE = "0b5a4f2e-5d7c-4c6f-9a47-1e9d8b9f1a11"
BASE_HEX = BASE.replace("-", "")
OTHER_BASE = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def env_for(database: DatabaseSettings | Path, **extra: str) -> dict[str, str]:
    env = {"PYTHON_SCHEDULER_AUTH_TOKEN": TOKEN, "SEATABLE_SERVER_URL": "http://127.0.0.1:9"}
    if isinstance(database, Path):
        env["PYTHON_SCHEDULER_SQLITE_PATH"] = str(database)
    else:
        env.update(database.env())
    env.update(extra)
    return env


# The lane marker (mariadb) follows from the value: tests/conftest.py reads the `backend` parameter.
@pytest.fixture(params=["sqlite", "mariadb"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_env(backend: str, request: pytest.FixtureRequest) -> Callable[..., dict[str, str]]:
    """Environment for the test's migrated, empty database of its backend (the same one on every call)."""
    fixture = "mariadb_scheduler_database" if backend == "mariadb" else "sqlite_scheduler_database"
    database: DatabaseSettings | Path = request.getfixturevalue(fixture)

    def make(**extra: str) -> dict[str, str]:
        return env_for(database, **extra)

    return make


@pytest.fixture
def config(make_env: Callable[..., dict[str, str]]) -> Config:
    return Config.from_env(make_env())


@pytest.fixture
def store(config: Config) -> Iterator[Store]:
    s = open_store(config)
    yield s
    s.disconnect()


@dataclass
class StubSeaTable:
    """A real HTTP server standing in for dtable-web's scripts-running-limit endpoint."""

    url: str = ""
    limit: int | None = -1
    status: int = 200
    requests: list[dict[str, Any]] = field(default_factory=list)

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        self.requests.append(
            {
                "path": environ["PATH_INFO"],
                "query": environ.get("QUERY_STRING", ""),
                "auth": environ.get("HTTP_AUTHORIZATION"),
            }
        )
        body = json.dumps({"scripts_running_limit": self.limit}).encode()
        start_response(f"{self.status} X", [("Content-Type", "application/json")])
        return [body]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def seatable_stub() -> Iterator[StubSeaTable]:
    stub = StubSeaTable()
    httpd: WSGIServer = make_server("127.0.0.1", 0, stub.app, handler_class=_QuietHandler)
    stub.url = f"http://127.0.0.1:{httpd.server_port}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield stub
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def client(config: Config, store: Store, seatable_stub: StubSeaTable) -> testing.TestClient:
    from dataclasses import replace

    cfg = replace(config, seatable_server_url=seatable_stub.url)
    test_client = testing.TestClient(create_app(cfg, store=store))
    test_client.store = store  # type: ignore[attr-defined]  # for callback_headers
    test_client.secrets = {}  # type: ignore[attr-defined]
    return test_client


def hand_off(store: Store, run_id: int, node: str = "http://node-a:8088") -> str:
    """Mark a pending run handed to `node`, as the dispatcher does before its POST; returns the callback secret."""
    from scheduler import callback_auth, lifecycle

    secret, digest = callback_auth.issue()
    lease = store.clock.now() + timedelta(seconds=60)
    store.write(
        lambda: store.db.execute(
            "UPDATE script_log SET claimed_by = 'test', lease_until = $lease WHERE id = $run_id",
            {"lease": lease, "run_id": run_id},
        )
    )
    assert lifecycle.hand_off(store, "test", {run_id: node}, lease, {run_id: digest}) == {run_id}
    return secret


def callback_headers(client: testing.TestClient, run_id: int) -> dict[str, str]:
    """The run's callback secret as the sandbox sends it, handing the run off first if no one has."""
    known: dict[int, str] = client.secrets  # type: ignore[attr-defined]
    if run_id not in known:
        known[run_id] = hand_off(client.store, run_id)  # type: ignore[attr-defined]
    return {"Authorization": f"Token {known[run_id]}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_scheduler(
    env: dict[str, str], log_path: Path, timeout: float = 30.0, ca_bundle: str | None = None
) -> RunningServer:
    """`seatable-scheduler serve` from this checkout (not the installed copy), as a real process.

    With `ca_bundle` it serves HTTPS (PYTHON_SCHEDULER_TLS_* in `env`) at https://localhost:<port>."""
    port = free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PYTHON_SCHEDULER_"))},
        "PYTHONPATH": str(REPO),
        "PYTHON_SCHEDULER_PORT": str(port),
        "PYTHON_SCHEDULER_BIND_HOST": "127.0.0.1",
        **env,
    }
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "scheduler.cli", "serve", "--migrate"],
            cwd=REPO,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"https://localhost:{port}" if ca_bundle else f"http://127.0.0.1:{port}"
    server = RunningServer(url, process, log_path)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"scheduler exited with {process.returncode}:\n{server.log()}")
        try:
            if requests.get(f"{server.url}/ping/", timeout=1, verify=ca_bundle or True).status_code == 200:
                return server
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or listening while its workers still boot (seconds on a busy machine)
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"scheduler did not answer in {timeout} s:\n{server.log()}")
        time.sleep(0.1)


def stop_scheduler(server: RunningServer) -> None:
    terminate(server.process)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start real scheduler processes with a given environment; all are stopped after the test."""
    started: list[RunningServer] = []

    def start(env: dict[str, str], ca_bundle: str | None = None) -> RunningServer:
        server = start_scheduler(env, tmp_path / f"scheduler-{len(started)}.log", ca_bundle=ca_bundle)
        started.append(server)
        return server

    yield start
    for server in started:
        stop_scheduler(server)


def new_run(client: testing.TestClient, **fields: Any) -> int:
    body = {"dtable_uuid": BASE, "script_name": "a.py", "owner": "alice@auth.local", "org_id": 7, **fields}
    result = client.simulate_post("/run-script/", json=body, headers=AUTH)
    assert result.status_code == 200, result.text
    return int(result.json["script_id"])


def finish(client: testing.TestClient, run_id: int, headers: dict[str, str] | None = None, **fields: Any) -> Any:
    """The result callback with the run's own secret (the run is handed off first when it was not)."""
    body = {
        "script_id": run_id,
        "success": True,
        "return_code": 0,
        "output": "ok",
        "spend_time": 1.5,
        **fields,
    }
    return client.simulate_post("/script-result/", json=body, headers=headers or callback_headers(client, run_id))
