"""The podman-compose stack of containers/compose.yaml, built and run offline as the stack user (not the sandbox
user: the runners' Podman runs runners only), with the sandbox on the host as the sandbox user.

Images: the local mmdebstrap base, then `podman build --build-arg BASE_IMAGE=localhost/...` of each
Containerfile, with the project's dependencies from a host-side wheelhouse. Each image's tag is a hash of
its inputs, so an unchanged tree is not rebuilt. The runner image is the one `./dev setup` imported.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from sandbox.host import SandboxUser, configured_user
from tests.deployment.images import (
    CACHE,
    CONTEXT_PATHS,
    LABEL,
    REPO,
    Podman,
    build_base,
    build_context,
    digest,
    tree_digest,
    wheelhouse,
)
from tests.support.podman import SandboxProcess

VENV_BIN = Path(os.environ.get("SEATABLE_PIPELINE_PREFIX", "/opt/seatable-pipeline")) / "venv" / "bin"
PROJECT = "seatable-deploy-test"  # compose project name: every container and volume carries it
SERVICES = ("mariadb", "python-scheduler", "dispatcher")


def stack_user_name() -> str:
    """The stack user next to the configured sandbox user: seatable-stack for seatable-sandbox, and a name of its
    own for another checkout's sandbox user (seatable-sandbox-x: seatable-stack-x), so stacks never share one."""
    sandbox = configured_user()
    name = sandbox.replace("seatable-sandbox", "seatable-stack", 1)
    return name if name != sandbox else f"{sandbox}-stack"


@dataclass
class Images:
    base: str
    scheduler: str
    sandbox: str
    mariadb: str


def build_image(podman: Podman, name: str, containerfile: str, base: str, context: Path,
                wheels: Path | None = None, key: str = "") -> str:
    """`podman build` of one Containerfile on the local base; skipped when the tagged image exists."""
    text = (REPO / "containers" / containerfile).read_text()
    tag = f"localhost/seatable-deploy-{name}:{digest(text, base, key)}"
    if podman.exists(tag):
        return tag
    argv = ["build", "-q", "-f", str(context / "containers" / containerfile), "--build-arg", f"BASE_IMAGE={base}",
            "--label", f"{LABEL}={name}", "-t", tag]
    if wheels is not None:  # offline: dependencies from the wheelhouse, so RUN steps need no network at all
        argv += ["--build-arg", "PIP_ARGS=--no-index --find-links /wheels", "-v", f"{wheels}:/wheels:ro",
                 "--network", "none"]
    podman.run(*argv, str(context), timeout=900)
    prune(podman, tag, name)
    return tag


def prune(podman: Podman, keep: str, name: str) -> None:
    """Remove this test's older builds of the same image (every source change makes a new tag) and their older
    untagged build stages. The newest build stage stays, and with it the layers under it: the next build after a
    change to the code reuses its dependency layer. Only images carrying this test's label are ever touched."""
    repository = keep.rsplit(":", 1)[0]
    listed = podman.run("images", "--filter", f"label={LABEL}", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}",
                        check=False).stdout.split("\n")
    stale = [line.split()[1] for line in listed
             if line.startswith(repository + ":") and not line.startswith(keep + " ")]
    stages = podman.run("images", "--filter", "dangling=true", "--filter", f"label={LABEL}={name}",
                        "--format", "{{.CreatedAt}}|{{.ID}}", check=False).stdout.split("\n")
    stale += [line.rsplit("|", 1)[1] for line in sorted(x for x in stages if "|" in x)[:-1]]  # all but the newest
    if stale:
        podman.run("rmi", *stale, check=False)  # an image still used by a container stays; fine


def rootless_networking() -> None:
    """Rootless networks (compose's, and RUN steps that fetch Debian packages) need slirp4netns, which opens
    /dev/net/tun as the user. Debian's udev makes it 0666; this VM has no udev and leaves it 0600, which fails
    with "open /dev/net/tun: Permission denied". Restore the distribution's mode (./dev setup should do this).
    """
    tun = Path("/dev/net/tun")
    if tun.exists() and stat.S_IMODE(tun.stat().st_mode) != 0o666 and os.geteuid() == 0:
        tun.chmod(0o666)


def build_images(podman: Podman) -> Images:
    rootless_networking()
    base = build_base(podman)
    wheels = wheelhouse(podman.user)
    context = build_context(podman.user)
    source = tree_digest(REPO, CONTEXT_PATHS)
    return Images(
        base=base,
        scheduler=build_image(podman, "scheduler", "Containerfile.scheduler", base, context, wheels, source),
        sandbox=build_image(podman, "sandbox", "Containerfile.sandbox", base, context, wheels, source),
        mariadb=build_image(podman, "mariadb", "Containerfile.mariadb", base, context,
                            key=(REPO / "containers/mariadb/entrypoint.sh").read_text()),
    )


def host_address() -> str:
    """This machine's own non-loopback address: what rootless containers (slirp4netns) reach the host by."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent; picks the outgoing interface's address
            address = str(probe.getsockname()[0])
        except OSError:
            address = ""
    if not address or address.startswith("127."):
        address = socket.gethostbyname(socket.gethostname())
    return address


@dataclass
class ComposeStack:
    """containers/compose.yaml under a test project name, with a generated env file and Podman secrets, as the
    stack user; `sandbox_urls` is where its dispatcher finds the sandbox."""

    podman: Podman
    images: Images
    env: dict[str, str]
    secrets: dict[str, str]
    sandbox_urls: str
    port: int
    workdir: Path = Path()

    def __post_init__(self) -> None:
        if self.workdir == Path():
            self.workdir = CACHE / f"compose-{self.user.name}"  # one per stack user: checkouts run side by side

    @property
    def user(self) -> SandboxUser:
        return self.podman.user

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        shutil.copy(REPO / "containers" / "compose.yaml", self.workdir / "compose.yaml")
        env_file = self.workdir / "pipeline.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in self.env.items()))
        env_file.chmod(0o600)
        for path in (self.workdir, env_file, self.workdir / "compose.yaml"):
            os.chown(path, self.user.uid, self.user.gid)
        self.containers_conf()
        self.clear_stale_dns()

    def create_secrets(self) -> None:
        """`podman secret create NAME -` for each, the value on stdin (never in an argv)."""
        self.remove_secrets()
        for name, value in self.secrets.items():
            result = self.user.run(["podman", "secret", "create", name, "-"], input=value)
            if result.returncode != 0:
                raise AssertionError(f"podman secret create {name} failed: {result.stderr[-2000:]}")

    def remove_secrets(self) -> None:
        for name in self.secrets:
            self.user.run(["podman", "secret", "rm", name])

    def clear_stale_dns(self) -> None:
        """Drop aardvark-dns state an interrupted run left for OUR network.

        netavark 1.4 keeps a pid file and per-network entries in the runtime dir; when a run dies half-way
        they outlive aardvark-dns, and the next `up` gets a network whose names never resolve.
        """
        dns = self.user.runtime_dir / "containers" / "networks" / "aardvark-dns"
        pid_file = dns / "aardvark.pid"
        try:
            pid = int(pid_file.read_text().strip())
            alive = Path(f"/proc/{pid}/comm").read_text().strip() == "aardvark-dns"
        except (OSError, ValueError):
            alive = False
        if not alive:
            pid_file.unlink(missing_ok=True)
            (dns / f"{PROJECT}_default").unlink(missing_ok=True)

    def containers_conf(self) -> Path:
        """The user's containers.conf plus a network config dir outside /var/lib.

        Podman 4.3's rootless network namespace mounts a tmpfs over /var/lib (podman#22227), so a user whose
        home is under /var/lib (seatable-sandbox's is) cannot see its own networks there: every bridge
        network is "not found" at start. A config dir elsewhere avoids that; docs/deployment.md says so.
        """
        networks = CACHE / f"podman-networks-{self.user.name}"
        networks.mkdir(exist_ok=True)
        os.chown(networks, self.user.uid, self.user.gid)
        user_conf = self.user.home / ".config" / "containers" / "containers.conf"
        text = user_conf.read_text() if user_conf.exists() else ""
        conf = self.workdir / "containers.conf"
        conf.write_text(text.rstrip() + f'\n[network]\nnetwork_config_dir = "{networks}"\n')
        os.chown(conf, self.user.uid, self.user.gid)
        return conf

    def compose(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {
            **self.user.env(),
            "CONTAINERS_CONF": str(self.workdir / "containers.conf"),
            "MARIADB_IMAGE": self.images.mariadb,
            "SCHEDULER_IMAGE": self.images.scheduler,
            "SCHEDULER_PUBLISH": f"127.0.0.1:{self.port}",
            "SANDBOX_URLS": self.sandbox_urls,
        }
        command = [str(VENV_BIN / "podman-compose"), "--project-name", PROJECT, "-f", "compose.yaml", *argv]
        return subprocess.run(self.user.command(command), env=env, cwd=self.workdir, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def up(self) -> None:
        # --no-deps: podman 4.3 fails `start` on --requires chains while a dependency restarts ("not found
        # in input list"); it ignores health conditions anyway, and the restart policies cover the ordering.
        result = self.compose("up", "-d", "--no-deps")
        if result.returncode != 0:
            raise AssertionError(f"podman-compose up failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.compose("down", "-v", "-t", "20")

    def containers(self) -> list[dict[str, Any]]:
        out = self.podman.run("ps", "-a", "--format", "json", "--filter",
                              f"label=io.podman.compose.project={PROJECT}").stdout
        data: list[dict[str, Any]] = json.loads(out or "[]")
        return data

    def health(self) -> dict[str, str]:
        states = {}
        for container in self.containers():
            names = container.get("Names") or ["?"]
            inspect = self.podman.run("inspect", "--format", "{{.State.Status}} {{.State.Health.Status}}",
                                      names[0], check=False).stdout.strip()
            states[names[0]] = inspect
        return states

    def logs(self, service: str, lines: int = 60) -> str:
        name = f"{PROJECT}_{service}_1"
        result = self.podman.run("logs", "--tail", str(lines), name, check=False)
        return f"--- {name}\n{result.stdout}{result.stderr}"

    def all_logs(self) -> str:
        return "\n".join(self.logs(s) for s in SERVICES)

    def wait_healthy(self, services: tuple[str, ...], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.health()
            ready = [s for s in services if health.get(f"{PROJECT}_{s}_1", "").endswith("healthy")
                     and not health[f"{PROJECT}_{s}_1"].endswith("unhealthy")]
            if len(ready) == len(services):
                return
            time.sleep(1)
        raise AssertionError(f"not healthy within {timeout:.0f} s: {self.health()}\n{self.all_logs()}")

    def wait_http(self, path: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + path, timeout=3).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise AssertionError(f"{self.url}{path} did not answer within {timeout:.0f} s\n{self.all_logs()}")


@dataclass
class HostSandbox(SandboxProcess):
    """The sandbox as the compose deployment runs it: on the host as the sandbox user, listening on the host's
    address (what host.containers.internal names in the stack's containers), not in the stack."""

    address: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"
