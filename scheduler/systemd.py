"""systemd units for the scheduler's processes: the API, the dispatcher and the maintenance timer.

The unit texts are rendered here (not shipped as files) so `seatable-scheduler install-systemd` works
from the installed package for any user, virtualenv and environment file; `systemd/` in the repository
holds the rendering with the defaults, and a test keeps the two identical.
"""

from __future__ import annotations

import argparse
import os
import pwd
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pipeline_config import render
from pipeline_config.variables import SCHEDULER
from scheduler.config import Config

DEFAULT_USER = "seatable-scheduler"
DEFAULT_VENV = Path("/opt/seatable-pipeline/venv")
DEFAULT_ENV_FILE = Path("/etc/seatable-pipeline/scheduler.env")
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
SYSUSERS_DIR = Path("/etc/sysusers.d")
DOCS = "https://github.com/seatable/python-pipeline"  # upstream's contract; our docs/deployment.md says the rest
API_UNIT = "seatable-scheduler.service"
DISPATCH_UNIT = "seatable-scheduler-dispatch.service"
MAINTAIN_UNIT = "seatable-scheduler-maintain.service"
MAINTAIN_TIMER = "seatable-scheduler-maintain.timer"
STATE_DIRECTORY = "seatable-scheduler"  # /var/lib/seatable-scheduler: the SQLite default lives there

# Applied to every scheduler unit. The processes speak HTTP and MySQL and read their virtualenv;
# they need no capability, no device, no kernel tunable and nothing writable but their state dir.
HARDENING = """\
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
CapabilityBoundingSet=
AmbientCapabilities=
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
PrivateMounts=yes
RemoveIPC=yes
UMask=0077
"""


@dataclass(frozen=True)
class Settings:
    """What differs between hosts: who runs the processes, where the code and the secrets are."""

    user: str = DEFAULT_USER
    venv: Path = DEFAULT_VENV
    env_file: Path = DEFAULT_ENV_FILE

    @property
    def cli(self) -> str:
        return str(self.venv / "bin" / "seatable-scheduler")


def _service(description: str, settings: Settings, body: str, after: str = "", wanted_by: str = "multi-user.target",
             ) -> str:
    after_line = f"After=network-online.target{' ' + after if after else ''}"
    install = f"\n[Install]\nWantedBy={wanted_by}\n" if wanted_by else ""
    return (
        "# Written by seatable-scheduler install-systemd; edit through a drop-in (systemctl edit).\n"
        "[Unit]\n"
        f"Description={description}\n"
        f"Documentation={DOCS}\n"
        "Wants=network-online.target\n"
        f"{after_line}\n"
        "\n[Service]\n"
        f"User={settings.user}\n"
        f"Group={settings.user}\n"
        f"EnvironmentFile={settings.env_file}\n"
        f"StateDirectory={STATE_DIRECTORY}\n"
        "StateDirectoryMode=0700\n"
        f"{body}"
        f"{HARDENING}"
        f"{install}"
    )


def units(settings: Settings = Settings()) -> dict[str, str]:
    """Unit file name -> text, for /etc/systemd/system."""
    return {
        API_UNIT: _service(
            "SeaTable Python scheduler API (gunicorn)", settings,
            "Type=exec\n"
            # gunicorn's control socket is off (scheduler/cli.py); should it be turned on, it goes to
            # $XDG_RUNTIME_DIR: a private one.
            "RuntimeDirectory=seatable-scheduler\n"
            "RuntimeDirectoryMode=0700\n"
            "Environment=XDG_RUNTIME_DIR=/run/seatable-scheduler\n"
            # The schema is created or adopted before the first request; idempotent, so every start may run it.
            f"ExecStartPre={settings.cli} migrate\n"
            f"ExecStart={settings.cli} serve\n"
            "Restart=on-failure\n"
            "RestartSec=2s\n"
            "TimeoutStopSec=40s\n",
            after="mariadb.service mysql.service",
        ),
        DISPATCH_UNIT: _service(
            "SeaTable Python dispatcher (hands pending runs to sandboxes)", settings,
            "Type=exec\n"
            f"ExecStart={settings.cli} dispatch\n"
            "Restart=on-failure\n"
            "RestartSec=2s\n"
            # SIGTERM: stop claiming, finish hand-offs in flight; a lease covers whatever is cut off.
            "KillSignal=SIGTERM\n"
            "TimeoutStopSec=60s\n",
            # After the API unit: its ExecStartPre has migrated the schema by then.
            after=f"mariadb.service mysql.service {API_UNIT}",
        ),
        MAINTAIN_UNIT: _service(
            "SeaTable Python scheduler maintenance (retention, stale runs)", settings,
            "Type=oneshot\n"
            f"ExecStart={settings.cli} maintain --once\n"
            "Nice=5\n"
            "TimeoutStartSec=30min\n",
            after=f"mariadb.service mysql.service {API_UNIT}",
            wanted_by="",  # started by its timer
        ),
        MAINTAIN_TIMER: (
            "# Written by seatable-scheduler install-systemd.\n"
            "[Unit]\n"
            "Description=SeaTable Python scheduler maintenance, every minute\n"
            f"Documentation={DOCS}\n"
            "\n[Timer]\n"
            # Each pass asks the sandboxes about handed-off runs (a lost sandbox ends its runs), ends stale
            # runs and deletes past-retention rows in batches; cheap when there is nothing to do.
            "OnBootSec=1min\n"
            "OnUnitInactiveSec=1min\n"
            "AccuracySec=10s\n"
            "\n[Install]\n"
            "WantedBy=timers.target\n"
        ),
    }


def sysusers(settings: Settings = Settings()) -> str:
    """systemd-sysusers line for the unprivileged service user (created at install or boot)."""
    return (
        "# Written by seatable-scheduler install-systemd.\n"
        f'u {settings.user} - "SeaTable Python scheduler" /var/lib/{STATE_DIRECTORY} /usr/sbin/nologin\n'
    )


def env_template() -> str:
    """Every scheduler variable with its meaning and default, commented out unless it must be filled in."""
    return render.env_template(SCHEDULER, (
        "# SeaTable Python pipeline: scheduler environment (generated from pipeline_config/variables.py).",
        "# Holds secrets: keep it root-owned and readable only by the service (mode 0640).",
    ))


def _system_units_enabled() -> bool:
    return Path("/run/systemd/system").is_dir() and Path("/proc/1/comm").read_text().strip() == "systemd"


def install(settings: Settings, root: Path, enable: bool = False, out: TextIO = sys.stdout) -> list[Path]:
    """Write units, sysusers entry and (when absent) the environment file under `root`."""
    written: list[Path] = []
    unit_dir = root / SYSTEM_UNIT_DIR.relative_to("/")
    unit_dir.mkdir(parents=True, exist_ok=True)
    for name, text in units(settings).items():
        written.append(_write(unit_dir / name, text, 0o644))
    sysusers_dir = root / SYSUSERS_DIR.relative_to("/")
    sysusers_dir.mkdir(parents=True, exist_ok=True)
    written.append(_write(sysusers_dir / "seatable-scheduler.conf", sysusers(settings), 0o644))
    env_file = root / settings.env_file.relative_to("/")
    if not env_file.exists():  # never overwrite an operator's secrets
        env_file.parent.mkdir(parents=True, exist_ok=True)
        written.append(_write(env_file, env_template(), 0o640))
    for path in written:
        print(f"wrote {path}", file=out)
    if enable:
        _enable(settings, root, out)
    return written


def _write(path: Path, text: str, mode: int) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)
    return path


def _enable(settings: Settings, root: Path, out: TextIO) -> None:
    if root != Path("/"):
        raise SystemExit("install-systemd: --enable only with --root /")
    if not _system_units_enabled():
        raise SystemExit("install-systemd: systemd is not PID 1 here; units written, nothing enabled")
    for argv in (["systemd-sysusers"], ["systemctl", "daemon-reload"],
                 ["systemctl", "enable", "--now", API_UNIT, DISPATCH_UNIT, MAINTAIN_TIMER]):
        print("+ " + " ".join(argv), file=out)
        subprocess.run(argv, check=True)
    try:
        group = pwd.getpwnam(settings.user).pw_gid
        os.chown(settings.env_file, 0, group)
    except (KeyError, FileNotFoundError):
        pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", default=DEFAULT_USER, help="service user (never root)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="virtualenv holding seatable-scheduler")
    parser.add_argument("--env-file", type=Path, default=DEFAULT_ENV_FILE, help="EnvironmentFile= of the units")
    parser.add_argument("--root", type=Path, default=Path("/"), help="write below this directory (staging)")
    parser.add_argument("--enable", action="store_true", help="then create the user and enable --now the units")
    parser.add_argument("--print-env", action="store_true", help="print the environment file template and exit")


def command(args: argparse.Namespace, config: Config) -> int:
    """`seatable-scheduler install-systemd`."""
    if args.print_env:
        print(env_template(), end="")
        return 0
    if args.user == "root" or args.user == "0":
        print("install-systemd: the scheduler must not run as root", file=sys.stderr)
        return 2
    for path in (args.venv, args.env_file):
        if not path.is_absolute():
            print(f"install-systemd: {path} must be an absolute path", file=sys.stderr)
            return 2
    if not args.root.is_absolute():
        args.root = args.root.resolve()
    if args.root == Path("/") and not (args.venv / "bin" / "seatable-scheduler").exists():
        print(f"install-systemd: note: {args.venv}/bin/seatable-scheduler does not exist (yet)", file=sys.stderr)
    install(Settings(args.user, args.venv, args.env_file), args.root, args.enable)
    return 0


__all__ = ["Settings", "add_arguments", "command", "env_template", "install", "units"]
