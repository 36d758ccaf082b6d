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

from sandbox import cgroups, runner_monitor, userfiles
from sandbox.errors import SetupError
from sandbox.limits import OOM_SCORE_SERVICES

DEFAULT_USER = "seatable-sandbox"
USER_VARIABLE = "SEATABLE_SANDBOX_USER"  # another sandbox user for ./dev, the tests and benchmarks
# Container uids 0..SUBID_COUNT-1 of every runner; each live run has one of RUN_UID_FIRST.. of its own.
SUBID_COUNT = 65536
SUBID_FIRST = 100000
CONFIG_DIR = Path(".config/containers")  # below the user's home
SERVICE_LOG = "podman-service.log"  # in the user's home: the API service's output when host-setup starts it
HOME_MODE = 0o711  # listed by nobody else; passable, as the runners (subordinate uids) must reach their layers


def configured_user() -> str:
    return os.environ.get(USER_VARIABLE) or DEFAULT_USER


@dataclass(frozen=True)
class SandboxUser:
    name: str
    uid: int
    gid: int
    home: Path

    @property
    def owner(self) -> tuple[int, int]:
        return self.uid, self.gid

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
    mechanism: str = "rlimit"  # cgroup-v2, cgroup-v1-delegated or rlimit
    concurrent_runs: int = 0  # runner uids: live runs that can each have a host uid of their own
    services_oom_score_adj: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def lookup_user(name: str) -> SandboxUser:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise SetupError(f"user {name!r} does not exist; run 'seatable-sandbox host-setup' as root") from None
    return SandboxUser(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


def ensure_user(name: str, comment: str = "SeaTable Python sandbox") -> SandboxUser:
    if os.geteuid() != 0:
        return lookup_user(name)
    try:
        pwd.getpwnam(name)
    except KeyError:
        _checked(["useradd", "--create-home", "--home-dir", f"/var/lib/{name}", "--shell", "/usr/sbin/nologin",
                  "--user-group", "--comment", comment, name], f"cannot create user {name}")
    user = lookup_user(name)
    for kind in ("uid", "gid"):
        _ensure_subids(user.name, Path(f"/etc/sub{kind}"), kind)
    with userfiles.opened(userfiles.user_dir(user.home, Path(), user.uid, user.gid)) as home_fd:
        # Podman adds the others' search bit itself before each runner's start: 0700 here raced with the warm pool.
        os.fchmod(home_fd, HOME_MODE)
        userfiles.make_private(home_fd, SERVICE_LOG, user.uid)
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
    user.runtime_dir.parent.mkdir(mode=0o755, exist_ok=True)
    with userfiles.opened(_runtime_path(user, Path())) as runtime:
        os.fchmod(runtime, 0o700)


def _runtime_path(user: SandboxUser, relative: Path) -> int:
    """A directory below /run/user/UID (made the user's where missing), opened without following links."""
    return userfiles.owned_path(user.runtime_dir.parent, Path(user.runtime_dir.name) / relative, user.uid, user.gid)


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


@dataclass(frozen=True)
class ConfigChange:
    storage: bool  # the storage driver changed: the user's storage must be reset
    engine: bool  # containers.conf changed: a running Podman service must be restarted


def write_podman_config(user: SandboxUser, runtime: str, runtime_path: Path | None = None,
                        monitor_path: Path | None = None) -> ConfigChange:
    """Write containers.conf and storage.conf; `runtime_path` replaces the runtime's binary (the wrapper),
    `monitor_path` conmon's (runner_monitor)."""
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
    if monitor_path is not None:
        containers_conf += f'conmon_path = ["{monitor_path}"]\n'
    if runtime_path is not None:
        # Same name (Podman keys runtime features by it), another binary: places runners in their cgroups.
        containers_conf += f'[engine.runtimes]\n{runtime} = ["{runtime_path}"]\n'
    # vfs (the rootless default) copies the whole image for every container.
    storage_conf = '# Written by seatable-sandbox host-setup.\n[storage]\ndriver = "overlay"\n'
    if not _native_overlay_supported():
        storage_conf += '[storage.options.overlay]\nmount_program = "/usr/bin/fuse-overlayfs"\n'
    with userfiles.opened(userfiles.user_dir(user.home, CONFIG_DIR, user.uid, user.gid)) as conf_dir:
        # Anything but the user's own plain file there (a link, a FIFO) reads as "changed".
        old_storage = _previous(conf_dir, "storage.conf", user.uid)
        old_containers = _previous(conf_dir, "containers.conf", user.uid)
        userfiles.replace_file(conf_dir, "containers.conf", containers_conf, 0o600, user.owner)
        userfiles.replace_file(conf_dir, "storage.conf", storage_conf, 0o600, user.owner)
    return ConfigChange(storage=old_storage is not None and old_storage != storage_conf,
                        engine=old_containers is not None and old_containers != containers_conf)


def _native_overlay_supported() -> bool:
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (5, 13)


def _previous(directory: int, name: str, uid: int) -> str | None:
    """The file's text; "" for an entry that is not the user's plain file, None when there is none."""
    text = userfiles.read_regular(directory, name, uid)
    if text is None:
        try:
            os.stat(name, dir_fd=directory, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return ""
    return text


def reset_storage_if_needed(user: SandboxUser, changed: bool) -> None:
    store = podman_info(user).get("store")
    driver = store.get("graphDriverName") if isinstance(store, dict) else None
    if changed or driver != "overlay":
        result = user.run(["podman", "system", "reset", "-f"])
        if result.returncode != 0:
            raise SetupError(f"podman system reset failed: {_last_line(result.stderr)}")


def podman_info(user: SandboxUser) -> dict[str, object]:
    result = user.run(["podman", "info", "--format", "json"])
    if result.returncode != 0 and "system migrate" in result.stderr:
        # A reboot (or a killed user session) leaves a stale pause-process record; Podman's own remedy.
        user.run(["podman", "system", "migrate"])
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
    os.close(_runtime_path(user, user.socket_path.parent.relative_to(user.runtime_dir)))
    with userfiles.opened(userfiles.user_dir(user.home, Path(), user.uid, user.gid)) as home:
        log = userfiles.open_log(home, SERVICE_LOG, user.uid, user.gid)
    subprocess.Popen(
        user.command(["podman", "system", "service", "--time=0", user.socket_url]),
        env=user.env(), cwd="/", stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        # Inherited by the service, its conmons and (until they raise it) the runners: the service outlives runs.
        preexec_fn=_protect_from_oom if os.geteuid() == 0 else None,
    )
    os.close(log)
    if not _wait_for_socket(user, 30):
        raise SetupError(f"podman API service did not come up on {user.socket_path}; see {user.home / SERVICE_LOG}")


def restart_api_service(user: SandboxUser) -> None:
    """After containers.conf changed: a running service keeps its old configuration until restarted."""
    if has_systemd() and os.geteuid() == 0:
        user.run(["systemctl", "--user", "restart", "podman.service"])
    else:
        pids = service_pids(user)
        for pid in pids:
            os.kill(pid, 15)
        deadline = time.monotonic() + 15
        while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
    start_api_service(user)


def service_pids(user: SandboxUser) -> list[int]:
    """The user's `podman system service` processes serving its socket."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != user.uid:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:3] == [b"podman", b"system", b"service"] and user.socket_url.encode() in argv:
            found.append(int(entry.name))
    return found


def _protect_from_oom() -> None:
    try:
        Path("/proc/self/oom_score_adj").write_text(str(OOM_SCORE_SERVICES))
    except OSError:
        pass  # no CAP_SYS_RESOURCE (a confined root): report() says so


def protect_services(user: SandboxUser) -> int:
    """Lower the oom_score_adj of a service started earlier (only root may lower it); the value now."""
    for pid in service_pids(user):
        try:
            Path(f"/proc/{pid}/oom_score_adj").write_text(str(OOM_SCORE_SERVICES))
        except OSError:
            continue
    pids = service_pids(user)
    return int(Path(f"/proc/{pids[0]}/oom_score_adj").read_text()) if pids else 0


def _wait_for_socket(user: SandboxUser, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if socket_alive(user):
            return True
        time.sleep(0.1)
    return False


def report(user: SandboxUser) -> HostReport:
    from sandbox.isolation import enforcement_of

    info = podman_info(user)
    host = info.get("host", {})
    assert isinstance(host, dict)
    controllers = [str(c) for c in host.get("cgroupControllers") or []]
    enforcement, mapping, _cgroups = enforcement_of(info)
    limits = {"memory": enforcement.memory, "pids": enforcement.pids, "cpu": enforcement.cpu}
    notes = [enforcement.note] if enforcement.note else []
    if enforcement.memory == "rlimit":
        notes.append("memory is bounded by RLIMIT_AS only (memfd, shared memory and tmpfs are not counted)")
    if not open_network_ready():
        notes.append("PYTHON_RUNNER_NETWORK=open needs nftables and python3-nftables: apt-get install nftables "
                     "python3-nftables")
    security = host.get("security", {})
    runtime = host.get("ociRuntime", {})
    store = info.get("store", {})
    service_pid = (service_pids(user) or [0])[0]
    if service_pid and _oom_score_adj(service_pid) > OOM_SCORE_SERVICES:
        notes.append(f"the Podman service's oom_score_adj is {_oom_score_adj(service_pid)}, not "
                     f"{OOM_SCORE_SERVICES}: start it as root with CAP_SYS_RESOURCE (host-setup, or "
                     "OOMScoreAdjust= in systemd); runners still go first (they raise theirs)")
    return HostReport(
        user=user.name,
        cgroup_version=cgroup_version(),
        cgroup_controllers=controllers,
        limits=limits,
        seccomp=bool(isinstance(security, dict) and security.get("seccompEnabled")),
        runtime=str(runtime.get("name", "")) if isinstance(runtime, dict) else "",
        storage_driver=str(store.get("graphDriverName", "")) if isinstance(store, dict) else "",
        socket=user.socket_url,
        mechanism=enforcement.mechanism,
        concurrent_runs=max(0, len(mapping.run_uids)),
        services_oom_score_adj=_oom_score_adj(service_pid),
        notes=notes,
    )


def _oom_score_adj(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/oom_score_adj").read_text()) if pid else 0
    except OSError:
        return 0


def open_network_ready() -> bool:
    """The open network's rules helper runs on the system interpreter with Debian's libnftables binding."""
    result = subprocess.run(["/usr/bin/python3", "-I", "-c", "import nftables; nftables.Nftables()"],
                            check=False, capture_output=True)
    return result.returncode == 0 and shutil.which("slirp4netns") is not None


def setup_host(name: str = DEFAULT_USER, cgroups_only: bool = False) -> HostReport | None:
    """Prepare the user, its Podman and (cgroup v1) its delegated runner cgroups; idempotent.

    `cgroups_only`: just the per-boot part (cgroupfs forgets the subtree at reboot)."""
    if cgroups_only:
        user = lookup_user(name)
        if os.geteuid() != 0:
            raise SetupError("--cgroups-only needs root (it makes cgroups and gives them to the user)")
        cgroups.delegate_subtree(user.uid, user.gid)
        return None
    for tool in ("podman", "newuidmap", "newgidmap"):
        if not shutil.which(tool):
            package = "uidmap" if tool.startswith("new") else tool
            raise SetupError(f"{tool} not found: install it with apt-get install {package}")
    user = ensure_user(name)
    if os.geteuid() != 0:
        start_api_service(user)
        return report(user)
    delegated = cgroups.delegate_subtree(user.uid, user.gid)
    runtime = choose_runtime()
    wrapper = None
    if runtime == "runc" and set(cgroups.REQUIRED) <= set(delegated):
        wrapper = cgroups.install_wrapper(user.name, user.uid, str(shutil.which("runc")))
    conmon = shutil.which("conmon")  # else Podman's own search, and runners keep the exit command
    monitor = runner_monitor.install_wrapper(user.name, conmon) if conmon else None
    changed = write_podman_config(user, runtime, wrapper, monitor)
    reset_storage_if_needed(user, changed.storage)
    if changed.engine and socket_alive(user):
        restart_api_service(user)
    start_api_service(user)
    protect_services(user)
    return report(user)


def _checked(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise SetupError(f"{what}: {_last_line(result.stderr or result.stdout)}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
