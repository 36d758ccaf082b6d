"""containers/compose.yaml comes up offline as the unprivileged stack user, runs a script end to end with the
sandbox on the host (the sandbox user's), keeps every secret out of `inspect` and out of the containers that do not
use it, keeps the stack out of the Podman the sandbox controls, and `podman-compose down` leaves nothing behind.
Images are built here from a local mmdebstrap base (no registry).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from pipeline_config.variables import SANDBOX
from sandbox.host import SandboxUser, configured_user
from sandbox.image import default_image
from tests.deployment.images import Podman
from tests.deployment.stack import (
    PROJECT,
    SERVICES,
    ComposeStack,
    HostSandbox,
    Images,
    build_images,
    host_address,
)
from tests.seatable_stub import StubServer
from tests.seatable_stub.button import RunScriptButton
from tests.support.podman import PodmanService, free_port

# The first test pays for the module's fixtures: up to four image builds (900 s each at most) and compose up.
pytestmark = pytest.mark.timeout(4 * 900 + 600)

SCRIPT = 'import sys, platform\nprint("hello from compose", platform.python_version())\n'
SECRET = secrets.token_urlsafe(24)  # SeaTable's PYTHON_SCHEDULER_AUTH_TOKEN
SECRETS = {
    "seatable_auth_token": SECRET,
    "sandbox_auth_token": secrets.token_urlsafe(24),
    "db_password": secrets.token_urlsafe(16),
    "db_root_password": secrets.token_urlsafe(16),
}
# compose.yaml: which secrets each service gets (and nothing else under /run/secrets).
SECRETS_OF = {
    "mariadb": {"db_password", "db_root_password"},
    "python-scheduler": {"seatable_auth_token", "db_password"},
    "dispatcher": {"seatable_auth_token", "sandbox_auth_token", "db_password"},
}


@pytest.fixture(scope="module")
def podman(stack_host: Podman) -> Podman:
    return stack_host


@pytest.fixture(scope="module")
def sandbox_podman(compose_host: Podman) -> Podman:
    """The sandbox user's Podman: the runners'."""
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


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="compose-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(podman: Podman, sandbox_podman: Podman, images: Images, stub: StubServer,
          workdir: Path) -> Iterator[ComposeStack]:
    runner = default_image()
    assert sandbox_podman.exists(runner), f"{runner} missing: ./dev setup builds it"
    sandbox_port = free_port()
    env = {
        "SEATABLE_SERVER_URL": stub.url,
        "DB_USER": "seatable", "MARIADB_USER": "seatable", "DATABASE_NAME": "scheduler",
        "PYTHON_PROCESS_TIMEOUT": "60",
    }
    compose = ComposeStack(podman, images, env, SECRETS, f"http://host.containers.internal:{sandbox_port}",
                           free_port())
    compose.prepare()
    compose.down()  # leftovers of an interrupted earlier run
    compose.create_secrets()
    sandbox = host_sandbox(sandbox_podman.user, workdir, sandbox_port, compose.url)
    try:
        compose.up()
        sandbox.start()
        compose.wait_http("/ping/", timeout=150)
        compose.sandbox = sandbox  # type: ignore[attr-defined]
        yield compose
    finally:
        sandbox.stop()
        compose.down()
        compose.remove_secrets()


def host_sandbox(user: SandboxUser, workdir: Path, port: int, scheduler_url: str) -> HostSandbox:
    """The sandbox as its systemd user unit runs it: its own environment (here: the test's), nothing of the
    stack's but the sandbox token the dispatcher sends."""
    state = workdir / "sandbox-state"
    state.mkdir()
    os.chown(state, user.uid, user.gid)
    env = {
        "PYTHON_SANDBOX_AUTH_TOKEN": SECRETS["sandbox_auth_token"],
        "PYTHON_SCHEDULER_URL": scheduler_url,
        "PYTHON_SANDBOX_BIND": f"{host_address()}:{port}",
        "PYTHON_SANDBOX_STATE_DIR": str(state),
        "PYTHON_SANDBOX_NODE_NAME": PROJECT,
        "PYTHON_RUNNER_NETWORK": "seatable",
        "PYTHON_PROCESS_TIMEOUT": "60",
        "PYTHON_SANDBOX_WARM_POOL": "1",
        "PYTHON_STARTER_THREAD_COUNT": "2",
    }
    if _sandbox_requires("PYTHON_SCHEDULER_AUTH_TOKEN"):  # its callback token, until nodes have their own
        env["PYTHON_SCHEDULER_AUTH_TOKEN"] = SECRET
    return HostSandbox(user, env, port, state, token=SECRETS["sandbox_auth_token"], address=host_address())


def _sandbox_requires(name: str) -> bool:
    return any(var.name == name and use.required for var, use in SANDBOX.uses())


def container(service: str) -> str:
    return f"{PROJECT}_{service}_1"


def test_stack_runs_a_script_end_to_end(stack: ComposeStack, stub: StubServer) -> None:
    base = stub.seatable.add_base(name="Compose")
    stub.seatable.add_script(base.uuid, "hello.py", SCRIPT)
    button = RunScriptButton(stack.url, SECRET, poll_interval=0.5)
    try:
        final = button.run(base.uuid, "hello.py", owner="carol@auth.local", org_id=7, deadline=180)
    except Exception:
        print(stack.all_logs(), stack.sandbox.log())  # type: ignore[attr-defined]
        raise
    assert final["state"] == "finished", (final, stack.all_logs())
    assert final["success"] is True and final["return_code"] == 0, (final, stack.all_logs())
    assert final["output"].startswith("hello from compose 3.13"), final["output"]  # the runner's Python


def test_every_service_passes_its_health_check(stack: ComposeStack) -> None:
    # Podman 4.3 schedules health checks with systemd timers, absent here: run each check once by hand.
    for service in ("mariadb", "python-scheduler"):
        deadline = time.monotonic() + 60
        while stack.podman.run("healthcheck", "run", container(service), check=False).returncode != 0:
            assert time.monotonic() < deadline, f"{container(service)} unhealthy\n{stack.logs(service)}"
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
    answer = stack.podman.run("exec", container("dispatcher"), "python3", "-c", probe, check=False)
    assert answer.stdout.split() == ["200", "Pong", "200", "Pong"], (answer.stderr, stack.all_logs())
    name = container("python-scheduler")
    status = stack.podman.run("exec", name, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split()[0] != "0" and fields["CapEff"].strip() == "0000000000000000", status
    assert "NoNewPrivs:\t1" in status
    listening = stack.podman.run("exec", name, "cat", "/proc/net/tcp").stdout
    assert any(line.split()[1] == "00000000:0050" and line.split()[3] == "0A" for line in listening.splitlines()[1:])


def test_no_secret_value_in_any_inspect_or_image(stack: ComposeStack) -> None:
    """`podman inspect` of every container, `podman image inspect` and the history of every image, and
    `podman secret inspect` show names and ids only: no value."""
    names = [container(service) for service in SERVICES]
    texts = {name: stack.podman.run("inspect", name).stdout for name in names}
    for image in (stack.images.mariadb, stack.images.scheduler):
        texts[image] = stack.podman.run("image", "inspect", image).stdout
        texts[f"{image} history"] = stack.podman.run("image", "history", "--no-trunc", "--format", "json",
                                                     image).stdout
    texts["secrets"] = stack.podman.run("secret", "inspect", *SECRETS).stdout
    assert all(len(text) > 100 for text in texts.values()), texts  # something was inspected
    for what, text in texts.items():
        leaked = [name for name, value in SECRETS.items() if value in text]
        assert leaked == [], f"{what} shows the value of {leaked}"
    env = json.loads(texts[container("dispatcher")])[0]["Config"]["Env"]
    assert "DB_PASSWD_FILE=/run/secrets/db_password" in env  # the reference is there, the value is not


def test_each_container_holds_only_its_own_secrets(stack: ComposeStack) -> None:
    """/run/secrets of each service lists exactly the secrets compose.yaml gives it, readable by its process's user
    only; and no process environment holds a value (mariadbd's neither: the entrypoint drops them before exec)."""
    for service, own in SECRETS_OF.items():
        name = container(service)
        listing = stack.podman.run("exec", name, "ls", "-ln", "/run/secrets").stdout.splitlines()[1:]
        files = {line.split()[-1]: line.split() for line in listing}
        assert set(files) == own, (service, listing)
        uid = stack.podman.run("exec", name, "sh", "-c", "id -u").stdout.strip()
        for entry in files.values():
            assert entry[0] == "-r--------" and entry[2] == uid, (service, entry)
        environ = stack.podman.run("exec", name, "cat", "/proc/1/environ").stdout
        assert not [s for s, value in SECRETS.items() if value in environ], service


def test_no_container_mounts_anything_of_the_host(stack: ComposeStack) -> None:
    """No docker.sock, no Podman socket, no host directory: named volumes only (secrets are Podman's own)."""
    for service in SERVICES:
        info = stack.podman.run("inspect", container(service), "--format",
                                "{{json .Mounts}}|{{.HostConfig.Privileged}}").stdout.strip()
        mounts_json, privileged = info.rsplit("|", 1)
        mounts = json.loads(mounts_json)
        assert {m["Type"] for m in mounts} <= {"volume"}, (service, mounts)
        assert privileged == "false"


def test_the_runners_podman_runs_runners_only(stack: ComposeStack, sandbox_podman: Podman) -> None:
    """The sandbox user's Podman (whose socket the sandbox holds) lists no container of the stack; the stack's
    are in the stack user's Podman; the sandbox's runners are in the sandbox user's."""
    assert sandbox_podman.user.name == configured_user() != stack.user.name
    theirs = json.loads(sandbox_podman.run("ps", "-a", "--format", "json").stdout or "[]")
    stack_images = {stack.images.mariadb, stack.images.scheduler}
    intruders = [c["Names"] for c in theirs
                 if (c.get("Labels") or {}).get("io.podman.compose.project") == PROJECT or c["Image"] in stack_images]
    assert intruders == []
    ours = {c["Names"][0] for c in stack.containers()}
    assert ours == {container(service) for service in SERVICES}
    runners = sandbox_podman.run("ps", "-a", "-q", "--filter", f"label=io.seatable.sandbox={PROJECT}").stdout.split()
    assert runners, "the host sandbox keeps a warm runner in its user's Podman"


def test_a_compromised_sandbox_reaches_neither_the_stacks_podman_nor_its_secrets(
        stack: ComposeStack, sandbox_podman: Podman, workdir: Path) -> None:
    """As the sandbox user (what a sandbox escape gets): the stack user's Podman API socket refuses it, its stored
    secrets cannot be read, and the sandbox's own environment holds no database or MariaDB secret."""
    sandbox_user, stack_user = sandbox_podman.user, stack.user
    service = PodmanService(stack_user, "deploy-test", workdir / "stack-podman.log").start()
    try:
        probe = ("import socket, sys\n"
                 "s = socket.socket(socket.AF_UNIX)\n"
                 "try:\n    s.connect(sys.argv[1]); print('connected')\n"
                 "except OSError as e:\n    print(type(e).__name__)\n")
        assert stack_user.run(["python3", "-c", probe, str(service.socket)]).stdout.strip() == "connected"
        assert sandbox_user.run(["python3", "-c", probe, str(service.socket)]).stdout.strip() == "PermissionError"
        listed = sandbox_user.run(["podman", "--url", service.url, "ps", "-a"])
        assert listed.returncode != 0 and PROJECT not in listed.stdout
    finally:
        service.stop()
    store = stack_user.home / ".local/share/containers/storage/secrets/filedriver/secretsdata.json"
    assert store.exists()
    read = sandbox_user.run(["cat", str(store)])
    assert read.returncode != 0 and "Permission denied" in read.stderr
    environ = b"".join(Path(f"/proc/{pid}/environ").read_bytes() for pid in sandbox_pids(stack))
    held = {name for name, value in SECRETS.items() if value.encode() in environ}
    expected = {"sandbox_auth_token"} | ({"seatable_auth_token"} if _sandbox_requires("PYTHON_SCHEDULER_AUTH_TOKEN")
                                         else set())
    assert held == expected


def sandbox_pids(stack: ComposeStack) -> list[int]:
    sandbox: HostSandbox = stack.sandbox  # type: ignore[attr-defined]
    assert sandbox.process is not None
    master = [int(p) for p in Path(f"/proc/{sandbox.process.pid}/task/{sandbox.process.pid}/children").read_text()
              .split()]
    return [*master, sandbox.worker_pid()]


def test_scheduler_answers_only_with_the_token(stack: ComposeStack) -> None:
    assert requests.get(stack.url + "/run-script/1/", params={"dtable_uuid": "x", "script_name": "a.py"},
                        timeout=5).status_code == 403


def test_zz_down_leaves_no_container_behind(stack: ComposeStack, sandbox_podman: Podman) -> None:
    """Last in this module: `podman-compose down` removes the services, and the sandbox's stop its runners."""
    result = stack.down()
    assert result.returncode == 0, result.stderr[-2000:]
    assert stack.containers() == []
    stack.sandbox.stop()  # type: ignore[attr-defined]
    runners = sandbox_podman.run("ps", "-a", "-q", "--filter", f"label=io.seatable.sandbox={PROJECT}").stdout.split()
    assert runners == [], "runner containers of the host sandbox survived its shutdown"
    networks = stack.podman.run("network", "ls", "-q", "--filter",
                                f"label=io.podman.compose.project={PROJECT}").stdout.split()
    assert networks == []

