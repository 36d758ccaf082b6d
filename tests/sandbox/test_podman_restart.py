"""The Podman API service dies under a running script and comes back (CHAOS.md, "Podman API service killed,
restarted"): the run keeps its result, or ends once as "sandbox lost: Podman unreachable" when Podman stays away
past its time limit; no runner container is left behind either way.

The sandbox talks to a Podman API service of its own (tests.support.podman.PodmanService), so killing it
touches no other checkout.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox import texts
from sandbox.driver import LABEL
from sandbox.host import SandboxUser
from sandbox.podman_api import STDOUT, PodmanAPI, PodmanError
from tests.support.podman import PodmanService, SandboxProcess

# Prints a line, waits long enough for the test to kill Podman and start it again, prints its own last line.
SCRIPT = "import time\nprint('started', flush=True)\ntime.sleep({sleep})\nprint('finished ok', flush=True)\n"


@pytest.fixture
def private_podman(sandbox_user: SandboxUser) -> Iterator[PodmanService]:
    directory = Path(tempfile.mkdtemp(prefix="podman-service-"))
    service = PodmanService(sandbox_user, directory.name, directory / "service.log").start()
    yield service
    if service.process is None:
        service.start()  # a test that failed with it down: remove what it left, then stop it
    api = PodmanAPI(service.url)
    try:
        # Only the runners of this test's sandboxes: the service lists every container of the sandbox user,
        # other workers' and other workloads' too.
        for node in service.nodes:
            for container in api.labelled(f"{LABEL}={node}"):
                api.remove(str(container["Id"]))
    finally:
        api.close()
    service.stop()
    shutil.rmtree(directory, ignore_errors=True)


def wait_until_started(service: PodmanService, node: str, script_id: int, timeout: float = 60) -> None:
    """Until the script's first line is in its runner's log: the job arrived and user code runs."""
    api = PodmanAPI(service.url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for container in api.labelled(f"{LABEL}={node}"):
                try:
                    output = b"".join(data for kind, data in api.logs(str(container["Id"])) if kind == STDOUT)
                except PodmanError:  # removed meanwhile (a warm runner replaced)
                    output = b""
                if b"started" in output:
                    return
            time.sleep(0.1)
    finally:
        api.close()
    raise AssertionError(f"script {script_id} did not start within {timeout} s")


def start_sandbox(sandbox_factory: Any, service: PodmanService, **env: str) -> SandboxProcess:
    sandbox: SandboxProcess = sandbox_factory(PYTHON_SANDBOX_PODMAN_URL=service.url, **env)
    service.nodes.append(sandbox.env["PYTHON_SANDBOX_NODE_NAME"])
    return sandbox


@pytest.mark.parametrize("warm_pool", ["0", "1"], ids=["cold", "warm"])
def test_a_run_keeps_its_result_across_a_podman_restart(private_podman: PodmanService, sandbox_factory: Any,
                                                        receiver: Any, warm_pool: str) -> None:
    sandbox = start_sandbox(sandbox_factory, private_podman, PYTHON_PROCESS_TIMEOUT="60",
                            PYTHON_SANDBOX_WARM_POOL=warm_pool)
    node = sandbox.env["PYTHON_SANDBOX_NODE_NAME"]
    assert sandbox.run(91, SCRIPT.format(sleep=3)).status_code == 202
    wait_until_started(private_podman, node, 91)
    private_podman.kill()
    time.sleep(2)  # Podman stays away while the script prints its last line
    private_podman.start()

    result = receiver.result(91, timeout=120)
    assert result["output"] == "started\nfinished ok\n"
    assert result["success"] is True and result["return_code"] == 0
    assert len(receiver.tries(91)) == 1
    assert "Podman unreachable" in sandbox.log()  # the run saw Podman go, and waited for it

    # Runners whose removal failed while Podman was away (a warm runner cut off with it) go later; a graceful
    # stop removes whatever of this node is left.
    sandbox.stop(signal.SIGTERM)
    assert private_podman.containers(node) == []


def test_podman_away_past_the_deadline_loses_the_run_once(private_podman: PodmanService, sandbox_factory: Any,
                                                         receiver: Any) -> None:
    sandbox = start_sandbox(sandbox_factory, private_podman, PYTHON_PROCESS_TIMEOUT="4")
    node = sandbox.env["PYTHON_SANDBOX_NODE_NAME"]
    assert sandbox.run(92, SCRIPT.format(sleep=2)).status_code == 202
    wait_until_started(private_podman, node, 92)
    private_podman.kill()

    result = receiver.result(92, timeout=120)  # its deadline (4 s) plus the slack, with Podman still away
    assert result["success"] is False and result["return_code"] is None
    assert result["output"].count(texts.PODMAN_LOST) == 1
    assert result["output"].startswith("started\n")
    code, body = sandbox.ready()
    assert code == 503 and "podman unreachable" in body["error"]

    private_podman.start()
    # The run's container could not be removed while Podman was away: the health thread removes it now.
    deadline = time.monotonic() + 60
    while private_podman.containers(node):
        assert time.monotonic() < deadline, f"runner left behind:\n{sandbox.log()}"
        time.sleep(0.2)
    assert sandbox.log().count("could not remove container") == 1
    assert len(receiver.tries(92)) == 1
