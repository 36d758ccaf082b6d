"""The sandbox as a systemd USER service of the unprivileged sandbox user, next to its podman.socket.

Rendered here (not shipped as files) so `seatable-sandbox install-systemd` works from the installed package;
`systemd/user/` in the repository holds the rendering with the defaults, kept identical by a test.

Why only some hardening: a user manager cannot set up mount namespaces by itself. ProtectSystem=,
ProtectHome=, PrivateTmp=, PrivateDevices= and ReadWritePaths= in a user unit make systemd add an implicit
PrivateUsers= user namespace, which fails where unprivileged user namespaces are restricted for systemd
(Ubuntu's AppArmor policy, kernel.unprivileged_userns_clone=0) and would hide paths the sandbox hands to the
Podman service, which runs OUTSIDE that namespace (the seccomp profile; the runners' egress sockets). What
needs no namespace works in a user unit and is used: no_new_privs and seccomp (NoNewPrivileges,
SystemCallFilter, RestrictAddressFamilies, RestrictNamespaces, MemoryDenyWriteExecute, ...). The runners
themselves are confined by Podman (user namespace, seccomp profile, read-only root, no capabilities).
Namespaces: the open network's rules helper (sandbox/netguard_helper.py) joins the user's own rootless user
namespace and then each runner's network namespace (setns), and speaks nftables over netlink; creating
namespaces, and joining any other kind, stays forbidden.
"""

from __future__ import annotations

import argparse
import os
import pwd
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pipeline_config import render
from pipeline_config.variables import SANDBOX
from sandbox import userfiles
from sandbox.errors import SetupError
from sandbox.limits import OOM_SCORE_SERVICES

DEFAULT_USER = "seatable-sandbox"
DEFAULT_VENV = Path("/opt/seatable-pipeline/venv")
DEFAULT_ENV_FILE = Path("/etc/seatable-pipeline/sandbox.env")
UNIT = "seatable-sandbox.service"
USER_UNIT_DIR = Path(".config/systemd/user")  # below the user's home
DELEGATE_DROPIN = "50-seatable-sandbox-delegate.conf"
DOCS = "https://github.com/seatable/python-pipeline"

# Hardening that works in a per-user service manager (see the module docstring).
USER_HARDENING = """\
NoNewPrivileges=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=user net
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
KeyringMode=private
UMask=0077
"""


@dataclass(frozen=True)
class Settings:
    """Who runs the sandbox and where its code and secrets are."""

    user: str = DEFAULT_USER
    venv: Path = DEFAULT_VENV
    env_file: Path = DEFAULT_ENV_FILE


def user_unit(settings: Settings = Settings()) -> str:
    """~/.config/systemd/user/seatable-sandbox.service of the sandbox user."""
    return (
        "# Written by seatable-sandbox install-systemd: a USER unit of the sandbox user\n"
        "# (systemctl --user -M seatable-sandbox@ ...). Needs `loginctl enable-linger` for that user.\n"
        "[Unit]\n"
        "Description=SeaTable Python sandbox (rootless runners through the user's Podman API)\n"
        f"Documentation={DOCS}\n"
        # The user's socket-activated Podman API: started with us, and before us.
        "Requires=podman.socket\n"
        "After=podman.socket\n"
        "\n[Service]\n"
        "Type=exec\n"
        f"EnvironmentFile={settings.env_file}\n"
        "Environment=PYTHON_SANDBOX_PODMAN_URL=unix://%t/podman/podman.sock\n"
        f"ExecStart={settings.venv}/bin/seatable-sandbox serve\n"
        "Restart=on-failure\n"
        "RestartSec=2s\n"
        # SIGTERM lets runs in flight finish (up to PYTHON_PROCESS_TIMEOUT) and the outbox flush.
        "KillMode=mixed\n"
        "TimeoutStopSec=16min\n"
        f"{USER_HARDENING}"
        "\n[Install]\n"
        "WantedBy=default.target\n"
    )


def delegate_dropin(settings: Settings = Settings()) -> str:
    """Drop-in for user@<uid>.service: what the sandbox user's manager needs from root, at every start.

    cgroup v2: delegated controllers rootless Podman then uses for runners. cgroup v1: the runners' cgroup
    subtree (cgroupfs forgets it at reboot). Both: the services' oom_score_adj, which only root may lower."""
    return (
        "# Written by seatable-sandbox install-systemd for the sandbox user's manager (and so for the sandbox,\n"
        "# its Podman API service and conmon).\n"
        "# cgroup v2: systemd delegates only memory and pids to user managers; with cpu as well, rootless\n"
        "# Podman enforces PYTHON_RUNNER_CONTAINER_CPUS too. Check:\n"
        "#   cat /sys/fs/cgroup/user.slice/user-<uid>.slice/user@<uid>.service/cgroup.controllers\n"
        "# cgroup v1/hybrid: Delegate= has no effect; ExecStartPre= (as root, '+') recreates the runners' cgroup\n"
        "# subtree that host-setup delegated, which cgroupfs forgets at reboot (a no-op on cgroup v2).\n"
        "# OOMScoreAdjust=: under memory pressure the kernel kills runners (which raise theirs), not the services.\n"
        "[Service]\n"
        "Delegate=memory pids cpu\n"
        f"ExecStartPre=+{settings.venv}/bin/seatable-sandbox host-setup --cgroups-only --user {settings.user}\n"
        f"OOMScoreAdjust={OOM_SCORE_SERVICES}\n"
    )


def env_template() -> str:
    """Every sandbox variable with its meaning and default, commented out unless it must be filled in."""
    return render.env_template(SANDBOX, (
        "# SeaTable Python pipeline: sandbox environment (generated from pipeline_config/variables.py).",
        "# Holds secrets: root-owned, group of the sandbox user, mode 0640.",
    ))


def install(settings: Settings, root: Path, enable: bool = False, out: TextIO = sys.stdout) -> list[Path]:
    """Write the user unit, the delegation drop-in and (when absent) the environment file under `root`."""
    entry = pwd.getpwnam(settings.user)
    home = Path(entry.pw_dir)
    owned = os.geteuid() == 0 and root == Path("/")
    written = [_write_user_unit(root, home, entry, owned, user_unit(settings))]
    dropin_dir = root / "etc/systemd/system" / f"user@{entry.pw_uid}.service.d"
    dropin_dir.mkdir(parents=True, exist_ok=True)
    written.append(_write(dropin_dir / DELEGATE_DROPIN, delegate_dropin(settings), 0o644))
    env_file = root / settings.env_file.relative_to("/")
    if not env_file.exists():  # never overwrite an operator's secrets
        env_file.parent.mkdir(parents=True, exist_ok=True)
        written.append(_write(env_file, env_template(), 0o640))
        if owned:
            os.chown(env_file, 0, entry.pw_gid)  # readable by the user manager, which reads EnvironmentFile=
    for path in written:
        print(f"wrote {path}", file=out)
    if enable:
        _enable(settings, root, entry, out)
    return written


def _write_user_unit(root: Path, home: Path, entry: pwd.struct_passwd, owned: bool, text: str) -> Path:
    """The unit in the user's home: its directories are the user's, so nothing in them is followed.

    `owned` (root installing for real): made the user's. Staging (--root): below `root`, kept as they are."""
    target = root / home.relative_to("/") / USER_UNIT_DIR / UNIT
    try:
        if owned:
            fd = userfiles.user_dir(home, USER_UNIT_DIR, entry.pw_uid, entry.pw_gid)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        with userfiles.opened(fd):
            userfiles.replace_file(fd, UNIT, text, 0o644, (entry.pw_uid, entry.pw_gid) if owned else None)
    except SetupError as exc:
        raise SystemExit(f"install-systemd: {exc}") from None
    return target


def _write(path: Path, text: str, mode: int) -> Path:
    """Files in root's own directories (/etc)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)
    return path


def systemd_is_pid1() -> bool:
    try:
        return Path("/run/systemd/system").is_dir() and Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


def _enable(settings: Settings, root: Path, entry: pwd.struct_passwd, out: TextIO) -> None:
    if root != Path("/"):
        raise SystemExit("install-systemd: --enable only with --root /")
    if not systemd_is_pid1():
        raise SystemExit("install-systemd: systemd is not PID 1 here; files written, nothing enabled")
    manager = f"{settings.user}@"
    for argv in (["systemctl", "daemon-reload"],  # picks up the user@.service drop-in
                 ["loginctl", "enable-linger", settings.user],
                 ["systemctl", "--user", "-M", manager, "daemon-reload"],
                 ["systemctl", "--user", "-M", manager, "enable", "--now", "podman.socket", UNIT]):
        print("+ " + " ".join(argv), file=out)
        subprocess.run(argv, check=True)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               commands: dict[str, Callable[[argparse.Namespace], int]]) -> None:
    """Register `install-systemd` on seatable-sandbox's subcommand table."""
    p = sub.add_parser("install-systemd", help="write the sandbox's systemd user unit and delegation drop-in")
    p.add_argument("--user", default=DEFAULT_USER, help="the unprivileged sandbox user (never root)")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="virtualenv holding seatable-sandbox")
    p.add_argument("--env-file", type=Path, default=DEFAULT_ENV_FILE, help="EnvironmentFile= of the unit")
    p.add_argument("--root", type=Path, default=Path("/"), help="write below this directory (staging)")
    p.add_argument("--enable", action="store_true", help="then enable-linger and enable --now the user units")
    p.add_argument("--print-env", action="store_true", help="print the environment file template and exit")
    commands["install-systemd"] = command


def command(args: argparse.Namespace) -> int:
    """`seatable-sandbox install-systemd`."""
    if args.print_env:
        print(env_template(), end="")
        return 0
    if args.user in ("root", "0"):
        print("install-systemd: the sandbox must run as an unprivileged user, not root", file=sys.stderr)
        return 2
    for path in (args.venv, args.env_file):
        if not path.is_absolute():
            print(f"install-systemd: {path} must be an absolute path", file=sys.stderr)
            return 2
    try:
        pwd.getpwnam(args.user)
    except KeyError:
        print(f"install-systemd: user {args.user!r} does not exist; run 'seatable-sandbox host-setup'",
              file=sys.stderr)
        return 2
    install(Settings(args.user, args.venv, args.env_file), args.root.resolve(), args.enable)
    return 0
