"""containers/compose.yaml comes up offline as the unprivileged sandbox user, runs a script end to end, and
`podman-compose down` leaves nothing behind. Images are built here from a local mmdebstrap base (no registry).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator

import pytest
import requests

from sandbox.image import default_image
from tests.deployment.images import Podman
from tests.deployment.stack import (
    PROJECT,
    ComposeStack,
    Images,
    build_images,
    host_address,
)
from tests.seatable_stub import StubServer
from tests.seatable_stub.button import RunScriptButton
from tests.support.podman import free_port

# The first test pays for the module's fixtures: up to four image builds (900 s each at most) and compose up.
pytestmark = pytest.mark.timeout(4 * 900 + 600)

SCRIPT = 'import sys, platform\nprint("hello from compose", platform.python_version())\n'


@pytest.fixture(scope="module")
def podman(compose_host: Podman) -> Podman:
    return compose_host


@pytest.fixture(scope="module")
def images(podman: Podman) -> Images:
    started = time.monotonic()
    built = build_images(podman)
    print(f"images ready in {time.monotonic() - started:.0f} s: {built}")
    return built


@pytest.fixture(scope="module")
def stub() -> Iterator[StubServer]:
    # Containers on the compose network reach the host by its own address (slirp4netns), not by 127.0.0.1.
    with StubServer(SECRET, host=host_address()) as server:
        yield server


SECRET = secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def stack(podman: Podman, images: Images, stub: StubServer) -> Iterator[ComposeStack]:
    runner = default_image()
    assert podman.exists(runner), f"{runner} missing: ./dev setup builds it"
    db_password = secrets.token_urlsafe(16)
    env = {
        "PYTHON_SCHEDULER_AUTH_TOKEN": SECRET,
        "PYTHON_SANDBOX_AUTH_TOKEN": secrets.token_urlsafe(24),
        "SEATABLE_SERVER_URL": stub.url,
        "DB_USER": "seatable", "DB_PASSWD": db_password, "DATABASE_NAME": "scheduler",
        "MARIADB_USER": "seatable", "MARIADB_PASSWORD": db_password,
        "MARIADB_ROOT_PASSWORD": secrets.token_urlsafe(16),
        "PYTHON_PROCESS_TIMEOUT": "60",
        "PYTHON_SANDBOX_WARM_POOL": "1",
        "PYTHON_STARTER_THREAD_COUNT": "2",
    }
    compose = ComposeStack(podman, images, env, runner, free_port())
    compose.prepare()
    compose.down()  # leftovers of an interrupted earlier run
    try:
        compose.up()
        compose.wait_http("/ping/", timeout=150)
        yield compose
    finally:
        result = compose.down()
        compose.last_down = result  # type: ignore[attr-defined]


def test_stack_runs_a_script_end_to_end(stack: ComposeStack, stub: StubServer) -> None:
    base = stub.seatable.add_base(name="Compose")
    stub.seatable.add_script(base.uuid, "hello.py", SCRIPT)
    button = RunScriptButton(stack.url, SECRET, poll_interval=0.5)
    try:
        final = button.run(base.uuid, "hello.py", owner="carol@auth.local", org_id=7, deadline=180)
    except Exception:
        print(stack.all_logs())
        raise
    assert final["state"] == "finished", (final, stack.all_logs())
    assert final["success"] is True and final["return_code"] == 0, (final, stack.all_logs())
    assert final["output"].startswith("hello from compose 3.13"), final["output"]  # the runner's Python


def test_every_service_passes_its_health_check(stack: ComposeStack) -> None:
    # Podman 4.3 schedules health checks with systemd timers, absent here: run each check once by hand.
    for service in ("mariadb", "python-scheduler", "sandbox"):
        name = f"{PROJECT}_{service}_1"
        deadline = time.monotonic() + 60
        while stack.podman.run("healthcheck", "run", name, check=False).returncode != 0:
            assert time.monotonic() < deadline, f"{name} unhealthy\n{stack.logs(service)}"
            time.sleep(1)


def test_seatable_finds_the_scheduler_where_it_looks(stack: ComposeStack) -> None:
    """SeaTable's default PYTHON_SCHEDULER_URL (http://python-scheduler, port 80) and its gatus check
    (http://python-scheduler/ping/) answer from another container on the stack's network, and what answers
    there is neither root nor holds a capability: port 80 comes from the container's own port floor."""
    probe = (
        "import urllib.request as u\n"
        "for url in ('http://python-scheduler/ping/', 'http://python-scheduler/ping'):\n"
        "    with u.urlopen(url, timeout=10) as r:\n"
        "        print(r.status, r.read().decode())\n"
    )
    answer = stack.podman.run("exec", f"{PROJECT}_dispatcher_1", "python3", "-c", probe, check=False)
    assert answer.stdout.split() == ["200", "Pong", "200", "Pong"], (answer.stderr, stack.all_logs())
    name = f"{PROJECT}_python-scheduler_1"
    status = stack.podman.run("exec", name, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split()[0] != "0" and fields["CapEff"].strip() == "0000000000000000", status
    assert "NoNewPrivs:\t1" in status
    listening = stack.podman.run("exec", name, "cat", "/proc/net/tcp").stdout
    assert any(line.split()[1] == "00000000:0050" and line.split()[3] == "0A" for line in listening.splitlines()[1:])


def test_sandbox_container_gets_only_the_rootless_socket(stack: ComposeStack) -> None:
    info = stack.podman.run("inspect", f"{PROJECT}_sandbox_1", "--format",
                            "{{json .Mounts}}|{{.HostConfig.Privileged}}").stdout.strip()
    mounts_json, privileged = info.rsplit("|", 1)
    mounts = json.loads(mounts_json)
    binds = [m for m in mounts if m.get("Type") == "bind"]
    assert [m["Source"] for m in binds] == [str(stack.user.socket_path)], mounts
    assert all("docker.sock" not in m.get("Source", "") for m in mounts)
    assert {m["Type"] for m in mounts} <= {"bind", "volume"}, mounts
    assert privileged == "false"
    # The process is not root in the container, and is the socket's owner on the host.
    status = stack.podman.run("exec", f"{PROJECT}_sandbox_1", "cat", "/proc/self/status").stdout
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1] != "0", uid_line
    assert "NoNewPrivs:\t1" in status
    top = stack.podman.run("top", f"{PROJECT}_sandbox_1", "huser").stdout.split()
    assert str(stack.user.uid) in top or stack.user.name in top, top


def test_scheduler_answers_only_with_the_token(stack: ComposeStack) -> None:
    assert requests.get(stack.url + "/run-script/1/", params={"dtable_uuid": "x", "script_name": "a.py"},
                        timeout=5).status_code == 403


def test_zz_down_leaves_no_container_behind(stack: ComposeStack) -> None:
    """Last in this module: `podman-compose down` removes the services and the sandbox its runners."""
    result = stack.down()
    assert result.returncode == 0, result.stderr[-2000:]
    assert stack.containers() == []
    runners = stack.podman.run("ps", "-a", "-q", "--filter", f"label=io.seatable.sandbox={PROJECT}").stdout.split()
    assert runners == [], "runner containers of the compose sandbox survived its shutdown"
    networks = stack.podman.run("network", "ls", "-q", "--filter",
                                f"label=io.podman.compose.project={PROJECT}").stdout.split()
    assert networks == []
