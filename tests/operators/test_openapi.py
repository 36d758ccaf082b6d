"""schemathesis against both real services, from the OpenAPI documents they serve at /openapi.json.

The scheduler runs under gunicorn (SQLite, the SeaTable stand-in behind it); the sandbox runs as the sandbox user
with its rootless Podman. The checks: no server error, every status code, content type, header and body as
described, and every request the description calls valid accepted (the one exception is listed in CONFIG with
its reason). Negative-data rejection is left out on purpose: the SeaTable routes are lenient where upstream was
(issue 15), e.g. a non-numeric `page` falls back to 1 instead of failing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sandbox.host import SandboxUser
from tests.scheduler.conftest import RunningServer, start_scheduler, stop_scheduler
from tests.seatable_stub import StubServer
from tests.support.podman import VENV_BIN, CallbackReceiver, SandboxProcess

CHECKS = ",".join((
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "positive_data_acceptance",
    "ignored_auth",
))

# Valid requests a scheduler refuses for what the database holds, not for their form (as upstream does):
# a team over its monthly run limit, and a run id that belongs to another base or script.
SCHEDULER_CONFIG = """
[[operations]]
include-path-regex = "^/run(-draft)?-script/$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "403", "404"]

[[operations]]
include-path = "/run-script/{script_id}/"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "403", "404"]

# OpenAPI cannot require one of two query parameters (username or org_id); SeaTable always sends one.
[[operations]]
include-path = "/scripts-running-count/"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "403", "404"]
"""


def schemathesis(
    url: str, auth: str, config: str, tmp_path: Path, max_examples: int
) -> subprocess.CompletedProcess[str]:
    config_file = tmp_path / "schemathesis.toml"
    config_file.write_text(f"seed = 17\nrequest-timeout = 30\n\n[generation]\nmax-examples = {max_examples}\n\n"
                           f"{auth}\n{config}")
    return subprocess.run(
        [str(VENV_BIN / "schemathesis"), "--config-file", str(config_file), "run", f"{url}/openapi.json",
         # One worker: Debian 12's Python 3.11.2 can fail ast.parse in two threads at once ("AST constructor
         # recursion depth mismatch", CPython gh-106905), which schemathesis's generator calls.
         "--checks", CHECKS, "--phases", "examples,coverage,fuzzing", "--workers", "1", "--max-failures", "20",
         "--no-color", "--suppress-health-check", "all"],
        capture_output=True, text=True, timeout=1200, check=False, env={**os.environ, "NO_COLOR": "1"},
        cwd=tmp_path,  # schemathesis keeps its crash cache in ./.schemathesis: never in the worktree
    )


def report(result: subprocess.CompletedProcess[str]) -> str:
    return (result.stdout[-12000:] + "\n" + result.stderr[-3000:]).strip()


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[tuple[RunningServer, str, str, str]]:
    secret, metrics, status = (secrets.token_urlsafe(18) for _ in range(3))
    stub = StubServer(secret, host="127.0.0.1").start()
    env = {"PYTHON_SCHEDULER_AUTH_TOKEN": secret, "SEATABLE_SERVER_URL": stub.url,
           "PYTHON_SCHEDULER_SQLITE_PATH": str(tmp_path / "scheduler.sqlite3"), "PYTHON_SCHEDULER_WORKERS": "2",
           "PYTHON_SCHEDULER_METRICS_TOKEN": metrics, "PYTHON_SCHEDULER_STATUS_TOKEN": status,
           "PYTHON_SANDBOX_URLS": "http://127.0.0.1:9"}
    server = start_scheduler(env, tmp_path / "scheduler.log")
    try:
        yield server, secret, metrics, status
    finally:
        stop_scheduler(server)
        stub.stop()


def test_scheduler_answers_as_its_description_says(scheduler: tuple[RunningServer, str, str, str],
                                                   tmp_path: Path) -> None:
    server, secret, metrics, status = scheduler
    document = requests.get(server.url + "/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.1")
    assert {"/run-script/", "/script-result/", "/metrics", "/status/"} <= set(document["paths"])
    auth = (f'[auth.openapi.token]\napi_key = "Token {secret}"\n\n[auth.openapi.metrics]\nbearer = "{metrics}"\n\n'
            f'[auth.openapi.status]\nusername = "ops"\npassword = "{status}"\n')
    result = schemathesis(server.url, auth, SCHEDULER_CONFIG, tmp_path, max_examples=15)
    assert result.returncode == 0, report(result)
    assert "Traceback" not in server.log()


@pytest.fixture
def sandbox(sandbox_user: SandboxUser, runner_image: str, tmp_path: Path) -> Iterator[SandboxProcess]:
    receiver = CallbackReceiver()
    receiver.start()
    from tests.support.podman import free_port

    user = sandbox_user  # the configured one (SEATABLE_SANDBOX_USER), whose Podman service the fixture started
    base = Path(tempfile.mkdtemp(prefix="sandbox-openapi-"))  # pytest's tmp_path is not the sandbox user's to enter
    base.chmod(0o755)
    state = base / "state"
    state.mkdir()
    os.chown(state, user.uid, user.gid)
    port = free_port()
    env = {"PYTHON_SANDBOX_AUTH_TOKEN": "sandbox-openapi-token", "PYTHON_SCHEDULER_URL": receiver.url,
           "PYTHON_SCHEDULER_AUTH_TOKEN": "scheduler-token", "PYTHON_SANDBOX_BIND": f"127.0.0.1:{port}",
           "PYTHON_SANDBOX_STATE_DIR": str(state), "PYTHON_SANDBOX_NODE_NAME": f"openapi-{port}",
           "PYTHON_PROCESS_TIMEOUT": "5", "PYTHON_STARTER_THREAD_COUNT": "2", "PYTHON_SANDBOX_WARM_POOL": "0",
           "PYTHON_SANDBOX_METRICS_TOKEN": "sandbox-metrics-token", "PYTHON_RUNNER_NETWORK": "none"}
    process = SandboxProcess(user, env, port, state, token="sandbox-openapi-token")
    process.start()
    try:
        yield process
    finally:
        process.stop()
        receiver.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_sandbox_answers_as_its_description_says(sandbox: SandboxProcess, tmp_path: Path) -> None:
    document = requests.get(sandbox.url + "/openapi.json", timeout=10).json()
    assert {"/function/run-python", "/function/runs/{script_id}", "/health", "/metrics"} <= set(document["paths"])
    auth = ('[auth.openapi.token]\napi_key = "Token sandbox-openapi-token"\n\n'
            '[auth.openapi.metrics]\nbearer = "sandbox-metrics-token"\n')
    result = schemathesis(sandbox.url, auth, "", tmp_path, max_examples=8)
    assert result.returncode == 0, report(result)
    assert "Traceback" not in sandbox.log()
