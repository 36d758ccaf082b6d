"""Root's tools never follow what the sandbox user planted (issue 20, item 3).

The attack from the issue: a throwaway sandbox user puts symlinks, hard links and FIFOs at every name that
`host-setup` and `install-systemd` (run as root, as ./dev does each time) write, read or chown in its home and
runtime directory, pointing at root-only files outside. The real commands run as real processes; afterwards every
file outside the home is as it was (content, owner, mode), nothing hung, and a planted directory link makes the
tool stop with one readable line instead of writing through it.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox import cgroups, runner_monitor
from sandbox.host import CONFIG_DIR, SERVICE_LOG, SandboxUser, lookup_user
from sandbox.systemd import UNIT, USER_UNIT_DIR
from tests.support.podman import VENV_BIN

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="plants files as a throwaway user: needs root")

TOOL_TIMEOUT = 180  # a tool blocked on a FIFO never comes back; the test then fails instead of hanging


@dataclass(frozen=True)
class Victim:
    """A root-only file outside the user's home, and what it looked like before the attack."""

    path: Path
    digest: str
    uid: int
    gid: int
    mode: int

    @classmethod
    def make(cls, directory: Path, name: str) -> Victim:
        path = directory / name
        path.write_text(f"root's {name}: must never change\n")
        path.chmod(0o600)
        return cls.seen(path)

    @classmethod
    def seen(cls, path: Path) -> Victim:
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else sorted(
            os.listdir(path)).__repr__()
        return cls(path, digest, info.st_uid, info.st_gid, info.st_mode)

    def unchanged(self) -> bool:
        return Victim.seen(self.path) == self


@pytest.fixture()
def throwaway_user() -> Iterator[SandboxUser]:
    name = f"sp-planted-{os.getpid() % 100000}"
    subprocess.run(["useradd", "--create-home", "--home-dir", f"/var/lib/{name}", "--shell", "/usr/sbin/nologin",
                    "--user-group", name], check=True, capture_output=True)
    user = lookup_user(name)
    try:
        yield user
    finally:
        _end_processes_of(user.uid)
        for controller in cgroups.v1_controllers():
            subtree = cgroups.ROOT / controller / cgroups.subtree_name(user.uid)
            if subtree.is_dir():
                subtree.rmdir()
        cgroups.wrapper_path(user.name).unlink(missing_ok=True)
        runner_monitor.wrapper_path(user.name).unlink(missing_ok=True)
        shutil.rmtree(f"/etc/systemd/system/user@{user.uid}.service.d", ignore_errors=True)
        shutil.rmtree(user.runtime_dir, ignore_errors=True)
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)
        shutil.rmtree(user.home, ignore_errors=True)


def _end_processes_of(uid: int) -> None:
    """The throwaway user's processes (its Podman service and pause process), all started by this test."""
    for _ in range(50):
        pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _owner(p) == uid]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _owner(proc: Path) -> int:
    try:
        return proc.stat().st_uid
    except OSError:
        return -1


@pytest.fixture()
def outside() -> Iterator[Path]:
    """Root-only files on the home's file system (so that hard links to them are possible)."""
    directory = Path(tempfile.mkdtemp(prefix="sp-victims-", dir="/var/lib"))
    directory.chmod(0o700)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def host_setup(user: SandboxUser) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "seatable-sandbox"), "host-setup", "--user", user.name, "--quiet"],
                          capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)


def install_systemd(user: SandboxUser, env_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "seatable-sandbox"), "install-systemd", "--user", user.name,
                           "--env-file", str(env_file)],
                          capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)


def file_names(user: SandboxUser) -> list[Path]:
    """Every file the tools write in the user's home."""
    return [user.home / CONFIG_DIR / "containers.conf", user.home / CONFIG_DIR / "storage.conf",
            user.home / SERVICE_LOG, user.home / USER_UNIT_DIR / UNIT]


def bait_names(user: SandboxUser) -> list[Path]:
    """Fixed temporary names earlier versions wrote through (the issue's attack); left alone now."""
    return [user.home / CONFIG_DIR / "containers.tmp", user.home / CONFIG_DIR / "storage.tmp",
            user.home / USER_UNIT_DIR / f"{UNIT}.tmp"]


def as_user(user: SandboxUser, path: Path) -> None:
    os.lchown(path, user.uid, user.gid)


def make_user_dirs(user: SandboxUser) -> None:
    for directory in (user.home / CONFIG_DIR, user.home / USER_UNIT_DIR):
        directory.mkdir(parents=True, exist_ok=True)
        for step in [directory, *directory.parents]:
            if step == user.home:
                break
            as_user(user, step)


def plant(user: SandboxUser, kind: str, victims: list[Victim]) -> None:
    make_user_dirs(user)
    for path, victim in zip(file_names(user) + bait_names(user), victims, strict=True):
        if path.exists() or path.is_symlink():
            path.unlink()
        if kind == "symlink":
            path.symlink_to(victim.path)
        elif kind == "hardlink":  # planted by root: as if fs.protected_hardlinks were 0
            os.link(victim.path, path)
            continue
        else:
            os.mkfifo(path, 0o666)
        as_user(user, path)


def stop_service(user: SandboxUser) -> None:
    """So that host-setup starts it again and opens its log."""
    _end_processes_of(user.uid)


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_planted_files_are_replaced_never_followed(throwaway_user: SandboxUser, outside: Path, kind: str) -> None:
    user = throwaway_user
    victims = [Victim.make(outside, f"victim-{i}") for i in range(len(file_names(user) + bait_names(user)))]
    env_file = outside / "sandbox.env"
    assert host_setup(user).returncode == 0  # a working host first, as ./dev leaves it
    stop_service(user)
    plant(user, kind, victims)

    setup = host_setup(user)
    systemd = install_systemd(user, env_file)

    assert setup.returncode == 0, setup.stderr
    assert systemd.returncode == 0, systemd.stderr
    for victim in victims:
        assert victim.unchanged(), f"{victim.path} changed through a planted {kind}"
    for victim in victims[:len(file_names(user))]:
        assert victim.path.stat().st_nlink == 1  # a planted hard link was replaced, not written through
    for path in file_names(user):
        info = path.lstat()
        assert path.is_file() and not path.is_symlink(), path
        assert (info.st_uid, info.st_nlink) == (user.uid, 1), path
    assert (user.home / CONFIG_DIR / "containers.conf").stat().st_mode & 0o077 == 0
    assert (user.home / SERVICE_LOG).stat().st_mode & 0o777 == 0o600
    assert user.home.stat().st_mode & 0o777 == 0o711  # listed by nobody else, passed through by the runners
    assert "runtime" in (user.home / CONFIG_DIR / "containers.conf").read_text()


@pytest.mark.parametrize("planted", [Path(".config"), CONFIG_DIR, Path(".config/systemd"), "runtime"])
def test_planted_directory_links_stop_the_tools(throwaway_user: SandboxUser, outside: Path,
                                                planted: Path | str) -> None:
    user = throwaway_user
    target = outside / "victim-dir"
    target.mkdir(mode=0o700)
    Victim.make(target, "inside")
    before = Victim.seen(target)
    inside = Victim.seen(target / "inside")
    if planted == "runtime":
        user.runtime_dir.mkdir(mode=0o700, exist_ok=True)
        as_user(user, user.runtime_dir)
        link = user.runtime_dir / "podman"
    else:
        assert isinstance(planted, Path)
        link = user.home / planted
        link.parent.mkdir(parents=True, exist_ok=True)
        for step in [link.parent, *link.parent.parents]:
            if step == user.home:
                break
            as_user(user, step)
    link.symlink_to(target)
    as_user(user, link)

    results = [host_setup(user)]
    if planted != "runtime":
        results.append(install_systemd(user, outside / "sandbox.env"))

    assert any(r.returncode != 0 for r in results)
    failed = next(r for r in results if r.returncode != 0)
    message = failed.stderr.strip()
    assert "refusing to follow" in message and "Traceback" not in message, message
    assert len(message.splitlines()) == 1, message
    assert before.unchanged() and inside.unchanged()
    assert sorted(os.listdir(target)) == ["inside"]
    assert pwd.getpwuid(target.stat().st_uid).pw_name == "root"
