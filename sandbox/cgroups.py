"""Per-run cgroups on cgroup v1 hosts, in a subtree that root delegated to the sandbox user.

Rootless Podman drops memory and pids limits on cgroup v1. So host-setup (as root) makes
/sys/fs/cgroup/<controller>/seatable-runners-<uid> for memory and pids (and cpu) and gives it to
the sandbox user. For each runner container the sandbox makes a child named by the container's id
and writes its limits BEFORE the container starts; the OCI runtime wrapper that host-setup
installs (`runtime_wrapper`) moves `runc create` into that child before the runner's first
process exists, so every process of the run is born inside it. (v1 lets a task be moved only by
its own uid or root, so placing the parent is the one way that holds for uids the sandbox user
does not own.)

The memory controller charges anonymous memory, page cache, tmpfs files (/tmp, /dev/shm) and
shared memory (memfd, SysV, POSIX) to the cgroup of the task that touched it first, all inside
the run; memory.memsw bounds memory plus swap. Once the container runs, the kernel's OOM killer
stays out of the run (memory.oom_control's oom_kill_disable): every task of the run that asks for
more waits at the limit, and the sandbox, notified through an eventfd, ends the whole run, as
cgroup v2's memory.oom.group does. Were the kernel to kill one task, the memory it freed would let
the run's other tasks grow on until the sandbox's kill came. Until the container runs, the kernel
does kill: a limit too small for `runc create` then fails the start instead of holding it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.userfiles import install_script

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
REQUIRED = ("memory", "pids")
OPTIONAL = ("cpu",)
CPU_PERIOD_US = 100_000
WRAPPER_DIR = Path("/usr/local/libexec/seatable-sandbox")
_CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$")
# In the OCI config of every runner that must run inside its own cgroups (see runtime_wrapper).
RUN_CGROUPS_ANNOTATION = "org.seatable.run-cgroups"


class CgroupError(Exception):
    """The run's cgroups could not be made; the message says what to do."""


def subtree_name(uid: int) -> str:
    return f"seatable-runners-{uid}"


def wrapper_path(user: str) -> Path:
    """Where host-setup puts the OCI runtime wrapper of that sandbox user."""
    return WRAPPER_DIR / f"runc-{user}"


def runtime_wrapper(uid: int, runc: str, root: Path = ROOT) -> str:
    """The sandbox user's OCI runtime: runc, except that `create` first joins the run's cgroups.

    A container whose config carries RUN_CGROUPS_ANNOTATION (every runner the sandbox starts with
    per-run cgroups) is refused when its cgroups are missing: it would otherwise run unbounded in
    the subtree. Other containers of the user without cgroups of their own go to runc unchanged."""
    controllers = " ".join((*REQUIRED, *OPTIONAL))
    subtree = subtree_name(uid)
    return f"""#!/bin/sh
# Written by seatable-sandbox host-setup: the OCI runtime of this user's rootless Podman.
# `create` of a runner container first moves itself into the cgroups the sandbox made for that
# container ({root}/<controller>/{subtree}/<container id>), so every process of the runner is
# born inside them; a runner (annotated {RUN_CGROUPS_ANNOTATION}) without them is refused.
# Anything else goes to runc unchanged.
create=; bundle=; previous=
for arg in "$@"; do
    case "$previous" in --bundle|-b) bundle=$arg ;; esac
    case "$arg" in create) create=1 ;; --bundle=*) bundle=${{arg#--bundle=}} ;; esac
    previous=$arg
done
if [ -n "$create" ]; then
    for id in "$@"; do :; done
    case "$id" in *[!0-9a-f]*|"") id= ;; esac
    required=
    if [ -n "$bundle" ] && grep -qF '"{RUN_CGROUPS_ANNOTATION}":"required"' "$bundle/config.json" 2>/dev/null; then
        required=1
    fi
    for controller in {controllers}; do
        [ -d "{root}/$controller/{subtree}" ] || continue
        dir={root}/$controller/{subtree}/$id
        if [ -n "$id" ] && [ -d "$dir" ]; then
            echo $$ > "$dir/cgroup.procs" || {{ echo "cannot join $dir" >&2; exit 1; }}
        elif [ -n "$required" ]; then
            echo "runner $id has no cgroup in {root}/$controller/{subtree}: refused" >&2
            exit 1
        fi
    done
fi
exec {runc} "$@"
"""


@dataclass
class _Watch:
    container: str
    event_fd: int
    control_fd: int
    events: int = 0


@dataclass
class RunCgroups:
    """The runs' cgroups in this user's delegated subtree; also watches them for OOM kills."""

    owner_uid: int  # the sandbox user: root delegated the subtree to it
    root: Path = ROOT
    on_oom: Callable[[str], None] | None = None  # called once per OOM event, from the watcher thread
    _controllers: list[str] | None = None
    _by_fd: dict[int, _Watch] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _wake: tuple[int, int] | None = None
    _thread: threading.Thread | None = None

    @property
    def subtree(self) -> str:
        return subtree_name(self.owner_uid)

    def base(self, controller: str) -> Path:
        return self.root / controller / self.subtree

    def controllers(self) -> list[str]:
        """The delegated controllers (read once: delegation changes only with host-setup)."""
        if self._controllers is None:
            self._controllers = [c for c in (*REQUIRED, *OPTIONAL) if self._owned(self.base(c))]
        return self._controllers

    def unusable(self) -> str:
        """Why this user cannot place runs here ("" when it can)."""
        missing = [c for c in REQUIRED if c not in self.controllers()]
        if missing:
            return (f"no cgroup subtree {self.subtree} delegated to uid {self.owner_uid} for "
                    f"{', '.join(missing)} (run 'seatable-sandbox host-setup' as root)")
        return ""

    def _owned(self, path: Path) -> bool:
        try:
            return path.stat().st_uid == self.owner_uid and os.access(path, os.W_OK)
        except OSError:
            return False

    def create(self, container: str, memory: int, pids: int, cpus: float = 0.0) -> None:
        """The container's cgroups with their limits; call before the container starts."""
        self._check(container)
        made: list[Path] = []
        try:
            for controller in self.controllers():
                path = self.base(controller) / container
                try:
                    path.mkdir()
                except OSError as exc:
                    raise CgroupError(f"cannot make the run's cgroup in {path.parent}: {exc.strerror} (after a "
                                      "reboot: 'seatable-sandbox host-setup --cgroups-only' as root)") from None
                made.append(path)
                if os.geteuid() != self.owner_uid:  # root (tests, run-local): the runtime joins as the user
                    for entry in (path, *path.iterdir()):
                        os.chown(entry, self.owner_uid, -1, follow_symlinks=False)
            self._write(container, "memory", "memory.limit_in_bytes", memory)
            if (self.base("memory") / container / "memory.memsw.limit_in_bytes").exists():
                self._write(container, "memory", "memory.memsw.limit_in_bytes", memory)  # no swapping past it
            self._write(container, "pids", "pids.max", pids)
            if cpus > 0 and "cpu" in self.controllers():
                self._write(container, "cpu", "cpu.cfs_period_us", CPU_PERIOD_US)
                self._write(container, "cpu", "cpu.cfs_quota_us", int(cpus * CPU_PERIOD_US))
            self._watch(container)
        except BaseException:
            for path in reversed(made):
                _rmdir(path)
            raise

    def hold_at_limit(self, container: str) -> None:
        """From now on the kernel kills no task of the run at its memory limit: each waits there for the sandbox
        to end the whole run. Call once the container runs: `runc create` runs inside the run's cgroups, and held
        at a limit too small for it, it would hold Podman's lock on the container, and with it the kill."""
        self._check(container)
        self._write(container, "memory", "memory.oom_control", 1)

    def remove(self, container: str) -> None:
        """After the container is gone: stop watching it and remove its cgroups."""
        self._check(container)
        self._unwatch(container)
        for controller in self.controllers():
            path = self.base(controller) / container
            if path.is_dir():
                _rmdir(path)

    def oom_events(self, container: str) -> int:
        """How often the kernel found this run over its memory limit (0: never; also 0 once removed)."""
        with self._lock:
            watch = next((w for w in self._by_fd.values() if w.container == container), None)
            if watch is None:
                return 0
            self._drain(watch)
            return watch.events

    def memory_usage(self, container: str) -> int:
        """Bytes charged to the run now: every process, tmpfs, shared memory and page cache."""
        self._check(container)
        return int((self.base("memory") / container / "memory.usage_in_bytes").read_text())

    def reclaim(self, live: Callable[[], set[str]]) -> int:
        """Remove cgroups of containers that no longer exist (left by a crash); `live` lists those that do.

        The cgroups are listed before the containers: another process of this user makes a run's cgroups
        only after its container exists, so a cgroup made meanwhile is never taken for a leftover."""
        found = [path for controller in self.controllers() for path in self.base(controller).iterdir()
                 if path.is_dir() and _CONTAINER_ID.match(path.name)]
        if not found:
            return 0
        alive = live()
        removed = 0
        for path in found:
            if path.name not in alive:
                self._unwatch(path.name)
                removed += _rmdir(path)
        return removed

    def stop(self) -> None:
        with self._lock:
            containers = [w.container for w in self._by_fd.values()]
        for container in containers:
            self._unwatch(container)
        if self._wake is not None and self._thread is not None:
            os.write(self._wake[1], b"q")
            self._thread.join(timeout=5)

    def _check(self, container: str) -> None:
        if not _CONTAINER_ID.match(container):
            raise ValueError(f"not a container id: {container!r}")

    def _write(self, container: str, controller: str, name: str, value: int) -> None:
        (self.base(controller) / container / name).write_text(str(value))

    # --- OOM notification: memory.oom_control through cgroup.event_control (v1) ----------------
    # File descriptors are opened, read and closed only under the lock, so the watcher never
    # reads a number that was closed and reused meanwhile.

    def _watch(self, container: str) -> None:
        base = self.base("memory") / container
        event_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        control_fd = os.open(base / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        try:
            (base / "cgroup.event_control").write_text(f"{event_fd} {control_fd}")
        except BaseException:
            os.close(event_fd)
            os.close(control_fd)
            raise
        with self._lock:
            self._by_fd[event_fd] = _Watch(container, event_fd, control_fd)
            if self._thread is None:
                self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                self._thread = threading.Thread(target=self._loop, name="oom-watch", daemon=True)
                self._thread.start()
            self._poke()

    def _unwatch(self, container: str) -> None:
        with self._lock:
            for fd, watch in list(self._by_fd.items()):
                if watch.container == container:
                    del self._by_fd[fd]
                    os.close(watch.event_fd)
                    os.close(watch.control_fd)
            self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            try:
                os.write(self._wake[1], b"w")
            except BlockingIOError:
                pass  # the watcher has wake-ups pending already

    def _loop(self) -> None:
        assert self._wake is not None
        wake = self._wake[0]
        while True:
            with self._lock:
                fds = list(self._by_fd)
            poller = select.poll()
            poller.register(wake, select.POLLIN)
            for fd in fds:
                poller.register(fd, select.POLLIN)
            for fd, _mask in poller.poll():
                if fd == wake:
                    if b"q" in os.read(wake, 4096):
                        return
                    continue
                with self._lock:
                    watch = self._by_fd.get(fd)
                    added = self._drain(watch) if watch is not None else 0
                if watch is not None and added and self.on_oom is not None:
                    log.warning("runner %s: over its memory limit; ending the run", watch.container[:12])
                    try:
                        self.on_oom(watch.container)
                    except Exception:
                        log.exception("ending runner %s after OOM failed", watch.container[:12])

    @staticmethod
    def _drain(watch: _Watch) -> int:
        """Add the eventfd's pending count to the run's total; the number just added."""
        try:
            added = int.from_bytes(os.read(watch.event_fd, 8), "little")
        except OSError:  # EAGAIN: nothing new
            return 0
        watch.events += added
        return added


def _rmdir(path: Path) -> int:
    """Remove a cgroup and the ones below it (runc nests its own in the run's), deepest first."""
    try:
        for child in path.iterdir():
            if child.is_dir():
                _rmdir(child)
        path.rmdir()
        return 1
    except FileNotFoundError:
        return 0
    except OSError as exc:  # EBUSY: a task still inside; the next reclaim retries
        log.warning("cannot remove cgroup %s: %s", path, exc.strerror)
        return 0


# --- host side (root, at host-setup) ---------------------------------------------------------

def v1_controllers() -> list[str]:
    """The controllers this host mounts as cgroup v1 hierarchies that runners need or can use."""
    return [c for c in (*REQUIRED, *OPTIONAL)
            if (ROOT / c / "cgroup.procs").exists() and not (ROOT / "cgroup.controllers").exists()]


def delegate_subtree(uid: int, gid: int) -> list[str]:
    """Make /sys/fs/cgroup/<controller>/seatable-runners-<uid> and give it to the sandbox user.

    Idempotent. cgroupfs forgets it at reboot: host-setup runs again at boot (the user@<uid>.service
    drop-in of install-systemd does, or ./dev setup)."""
    delegated = []
    for controller in v1_controllers():
        name = subtree_name(uid)
        # The subtree is the user's once delegated: it may have made cgroups (never links: cgroupfs has none)
        # in it. Only the subtree and its own control files change owner, through a descriptor, not following.
        parent = os.open(ROOT / controller, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=parent)
            subtree = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        finally:
            os.close(parent)
        try:
            os.fchown(subtree, uid, gid)
            with os.scandir(subtree) as entries:
                files = [entry.name for entry in entries if entry.is_file(follow_symlinks=False)]
            for file in files:
                os.chown(file, uid, gid, dir_fd=subtree, follow_symlinks=False)
        finally:
            os.close(subtree)
        delegated.append(controller)
    return delegated


def install_wrapper(user: str, uid: int, runc: str) -> Path:
    """The runtime wrapper, root-owned, for containers.conf's [engine.runtimes]."""
    return install_script(wrapper_path(user), runtime_wrapper(uid, runc))
