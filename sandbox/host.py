"""The rootless Podman host: an unprivileged user, its Podman configuration and API service.

Everything here is run by an administrator (root) once per host, or by ./dev. The sandbox
service itself later runs as that user and only talks to the user's API socket.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sandbox.errors import SetupError

DEFAULT_USER = "seatable-sandbox"
SUBID_COUNT = 65536
SUBID_FIRST = 100000


@dataclass(frozen=True)
class SandboxUser:
    name: str
    uid: int
    gid: int
    home: Path

    @property
    def runtime_dir(self) -> Path:
        return Path(f"/run/user/{self.uid}")

    @property
    def socket_path(self) -> Path:
        return self.runtime_dir / "podman" / "podman.sock"

    @property
    def socket_url(self) -> str:
        return f"unix://{self.socket_path}"

    def env(self) -> dict[str, str]:
        """A clean environment for commands run as this user (nothing of root's leaks in)."""
        return {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "LANG": "C.UTF-8",
        }

    def command(self, argv: list[str]) -> list[str]:
        """argv run as this user when we are root, as is when we already are the user."""
        if os.geteuid() == self.uid:
            return argv
        return ["runuser", "-u", self.name, "--", *argv]

    def run(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        opts: dict[str, object] = {"text": True, "capture_output": True, "env": self.env(), "cwd": "/"}
        opts.update(kwargs)
        return subprocess.run(self.command(argv), check=False, **opts)  # type: ignore[call-overload]


@dataclass
class HostReport:
    """What this host can enforce for rootless runners; also served by the sandbox's /health."""

    user: str
    cgroup_version: str
    cgroup_controllers: list[str]
    limits: dict[str, str]
    seccomp: bool
    runtime: str
    storage_driver: str
    socket: str
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def lookup_user(name: str) -> SandboxUser:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise SetupError(f"user {name!r} does not exist; run 'seatable-sandbox host-setup' as root") from None
    return SandboxUser(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


def ensure_user(name: str) -> SandboxUser:
    if os.geteuid() != 0:
        return lookup_user(name)
    try:
        pwd.getpwnam(name)
    except KeyError:
        home = f"/var/lib/{name}"
        _checked(["useradd", "--create-home", "--home-dir", home, "--shell", "/usr/sbin/nologin",
                  "--user-group", "--comment", "SeaTable Python sandbox", name], f"cannot create user {name}")
    user = lookup_user(name)
    for kind in ("uid", "gid"):
        _ensure_subids(user.name, Path(f"/etc/sub{kind}"), kind)
    _ensure_runtime_dir(user)
    return user


def _ensure_subids(name: str, path: Path, kind: str) -> None:
    entries = [line.split(":") for line in path.read_text().splitlines() if line.count(":") == 2] \
        if path.exists() else []
    if any(e[0] == name for e in entries):
        return
    start = max([int(e[1]) + int(e[2]) for e in entries] + [SUBID_FIRST])
    flag = "--add-subuids" if kind == "uid" else "--add-subgids"
    _checked(["usermod", flag, f"{start}-{start + SUBID_COUNT - 1}", name], f"cannot add sub{kind}s for {name}")


def _ensure_runtime_dir(user: SandboxUser) -> None:
    """Without logind nobody makes /run/user/UID; Podman needs it for its socket and state."""
    path = user.runtime_dir
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, user.uid, user.gid)
    path.chmod(0o700)


def has_systemd() -> bool:
    return Path("/run/systemd/system").is_dir()


def cgroup_version() -> str:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "v2"
    if Path("/sys/fs/cgroup/unified").is_dir():
        return "v1-hybrid"
    return "v1"


def choose_runtime() -> str:
    """crun refuses v1 and hybrid hosts; runc runs everywhere. Verified later by a real run."""
    if cgroup_version() == "v2" and shutil.which("crun"):
        return "crun"
    if shutil.which("runc"):
        return "runc"
    if shutil.which("crun"):
        return "crun"
    raise SetupError("no OCI runtime found: install runc (apt-get install runc)")


def write_podman_config(user: SandboxUser, runtime: str) -> bool:
    """Write containers.conf and storage.conf; return True when the storage driver changed."""
    conf_dir = user.home / ".config" / "containers"
    cgroup_manager = "systemd" if has_systemd() else "cgroupfs"
    containers_conf = (
        "# Written by seatable-sandbox host-setup.\n"
        "[containers]\n"
        'log_driver = "k8s-file"\n'
        "[engine]\n"
        f'runtime = "{runtime}"\n'
        f'cgroup_manager = "{cgroup_manager}"\n'
        f'events_logger = "{"journald" if has_systemd() else "file"}"\n'
        "service_timeout = 0\n"
    )
    # vfs (the rootless default) copies the whole image for every container.
    storage_conf = '# Written by seatable-sandbox host-setup.\n[storage]\ndriver = "overlay"\n'
    if not _native_overlay_supported():
        storage_conf += '[storage.options.overlay]\nmount_program = "/usr/bin/fuse-overlayfs"\n'
    storage_path = conf_dir / "storage.conf"
    old_storage = storage_path.read_text() if storage_path.exists() else None
    _write_owned(user, conf_dir / "containers.conf", containers_conf)
    _write_owned(user, storage_path, storage_conf)
    return old_storage is not None and old_storage != storage_conf


def _native_overlay_supported() -> bool:
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (5, 13)


def _write_owned(user: SandboxUser, path: Path, text: str) -> None:
    for parent in reversed(path.relative_to(user.home).parents):
        directory = user.home / parent
        if not directory.exists():
            directory.mkdir(mode=0o700)
            os.chown(directory, user.uid, user.gid)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.chown(tmp, user.uid, user.gid)
    tmp.replace(path)


def reset_storage_if_needed(user: SandboxUser, changed: bool) -> None:
    store = podman_info(user).get("store")
    driver = store.get("graphDriverName") if isinstance(store, dict) else None
    if changed or driver != "overlay":
        result = user.run(["podman", "system", "reset", "-f"])
        if result.returncode != 0:
            raise SetupError(f"podman system reset failed: {_last_line(result.stderr)}")


def podman_info(user: SandboxUser) -> dict[str, object]:
    result = user.run(["podman", "info", "--format", "json"])
    if result.returncode != 0:
        raise SetupError(f"podman info failed as {user.name}: {_last_line(result.stderr)}")
    info: dict[str, object] = json.loads(result.stdout)
    return info


def socket_alive(user: SandboxUser) -> bool:
    import socket

    if not user.socket_path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(str(user.socket_path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.")
        except OSError:
            return False


def start_api_service(user: SandboxUser) -> None:
    """Start `podman system service` for the user unless something already answers on its socket."""
    if socket_alive(user):
        return
    if has_systemd() and os.geteuid() == 0:
        _checked(["loginctl", "enable-linger", user.name], "loginctl enable-linger failed")
        result = user.run(["systemctl", "--user", "enable", "--now", "podman.socket"])
        if result.returncode == 0 and _wait_for_socket(user, 10):
            return
    user.socket_path.parent.mkdir(parents=True, exist_ok=True)
    os.chown(user.socket_path.parent, user.uid, user.gid)
    log = open(user.home / "podman-service.log", "ab")
    os.chown(user.home / "podman-service.log", user.uid, user.gid)
    subprocess.Popen(
        user.command(["podman", "system", "service", "--time=0", user.socket_url]),
        env=user.env(), cwd="/", stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
    )
    log.close()
    if not _wait_for_socket(user, 30):
        raise SetupError(f"podman API service did not come up on {user.socket_path}; see {log.name}")


def _wait_for_socket(user: SandboxUser, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if socket_alive(user):
            return True
        time.sleep(0.1)
    return False


def report(user: SandboxUser) -> HostReport:
    info = podman_info(user)
    host = info.get("host", {})
    assert isinstance(host, dict)
    controllers = [str(c) for c in host.get("cgroupControllers") or []]
    version = cgroup_version()
    limits = {}
    for limit, controller in (("memory", "memory"), ("pids", "pids"), ("cpu", "cpu")):
        limits[limit] = "cgroup" if version == "v2" and controller in controllers else "rlimit"
    notes = []
    if not open_network_ready():
        notes.append("PYTHON_RUNNER_NETWORK=open needs nftables and python3-nftables: apt-get install nftables "
                     "python3-nftables")
    if version != "v2":
        notes.append("cgroup v1: rootless Podman cannot apply memory/pids/cpu limits; rlimits are enforced instead")
    elif set(limits.values()) != {"cgroup"}:
        notes.append("cgroup v2 without full delegation: add Delegate=memory pids cpu to user@.service")
    security = host.get("security", {})
    runtime = host.get("ociRuntime", {})
    store = info.get("store", {})
    return HostReport(
        user=user.name,
        cgroup_version=version,
        cgroup_controllers=controllers,
        limits=limits,
        seccomp=bool(isinstance(security, dict) and security.get("seccompEnabled")),
        runtime=str(runtime.get("name", "")) if isinstance(runtime, dict) else "",
        storage_driver=str(store.get("graphDriverName", "")) if isinstance(store, dict) else "",
        socket=user.socket_url,
        notes=notes,
    )


def open_network_ready() -> bool:
    """The open network's rules helper runs on the system interpreter with Debian's libnftables binding."""
    result = subprocess.run(["/usr/bin/python3", "-I", "-c", "import nftables; nftables.Nftables()"],
                            check=False, capture_output=True)
    return result.returncode == 0 and shutil.which("slirp4netns") is not None


def setup_host(name: str = DEFAULT_USER) -> HostReport:
    for tool in ("podman", "newuidmap", "newgidmap"):
        if not shutil.which(tool):
            package = "uidmap" if tool.startswith("new") else tool
            raise SetupError(f"{tool} not found: install it with apt-get install {package}")
    user = ensure_user(name)
    if os.geteuid() == 0:
        changed = write_podman_config(user, choose_runtime())
        reset_storage_if_needed(user, changed)
    start_api_service(user)
    return report(user)


def _checked(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise SetupError(f"{what}: {_last_line(result.stderr or result.stdout)}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
