"""Upstream's admin-documented runner settings, read with their safe meaning.

Upstream appends `PYTHON_RUNNER_OTHER_OPTIONS` verbatim to `docker run` and makes the hardening switches
optional. Here runners are always read-only, without capabilities and without new privileges, so these settings
either ask for what is already the case (accepted), ask for something safe that maps onto the runner's spec
(read-only bind mounts, extra environment, extra hosts), or would weaken the runner (refused at start, one line).
"""

from __future__ import annotations

import ast
import os
import posixpath
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_CAPABILITY = re.compile(r"(CAP_)?[A-Z_]+", re.IGNORECASE)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*")

# Host paths that would give a runner the host (or this sandbox): never a mount source, nor any directory above them.
PROTECTED_SOURCES = ("/proc", "/sys", "/dev", "/run", "/var/run", "/boot", "/root", "/var/lib/containers",
                     "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64")
# Except certificate stores, which the admin docs mount for a custom CA.
ALLOWED_UNDER_PROTECTED = ("/etc/ssl", "/etc/pki", "/etc/ca-certificates", "/usr/share/ca-certificates",
                           "/usr/local/share/ca-certificates")
# Where a mount would hide or replace what keeps the runner contained.
SHADOWED = ("/", "/tmp")  # noqa: S108 - the runner's own tmpfs, not a file of ours
PROTECTED_TARGETS = ("/proc", "/sys", "/dev", "/opt/seatable-runner", "/run/egress")


class RunnerOptionError(ValueError):
    """A runner setting refused at start; the message is the one line the operator sees."""


@dataclass(frozen=True)
class BindMount:
    source: str
    target: str
    writable: bool = False

    def spec(self) -> dict[str, Any]:
        return {"destination": self.target, "type": "bind", "source": self.source,
                "options": ["rw" if self.writable else "ro", "rbind", "nosuid", "nodev"]}


@dataclass(frozen=True)
class RunnerOptions:
    """What the admin's upstream settings add to every runner."""

    mounts: tuple[BindMount, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    hosts: tuple[str, ...] = ()  # "name:ip", as Podman's hostadd
    notes: tuple[str, ...] = ()  # settings accepted without effect, logged once at start

    def spec(self) -> dict[str, Any]:
        """Container spec fields on top of the driver's (mounts are added by the driver)."""
        return {"hostadd": list(self.hosts), "use_image_hosts": False} if self.hosts else {}


def read(env: Mapping[str, str], network: str, protected: tuple[str, ...] = ()) -> RunnerOptions:
    """All of upstream's runner settings from the environment; `protected`: more host paths never mounted
    (the sandbox's state directory and home)."""
    notes = [*_hardening_switches(env), *_identity(env)]
    mounts: list[BindMount] = []
    extra_env: dict[str, str] = {}
    hosts: list[str] = []
    for option in _option_list(env.get("PYTHON_RUNNER_OTHER_OPTIONS", "")):
        flag, _, value = option.partition("=")
        if flag in ("--volume", "-v"):
            mounts.append(_volume(value, protected))
        elif flag == "--mount":
            mounts.append(_mount(value, protected))
        elif flag in ("--env", "-e"):
            name, sep, text = value.partition("=")
            if not sep or not _ENV_NAME.fullmatch(name):
                raise _refuse(option, "use --env=NAME=VALUE")
            extra_env[name] = text
        elif flag == "--add-host":
            hosts.append(_host(option, value, network))
        else:
            raise _refuse(option, "supported here: --volume/-v, --mount=type=bind, --env/-e, --add-host; "
                                  "limits, network and security have their own PYTHON_RUNNER_* settings")
    targets = [m.target for m in mounts]
    duplicate = next((t for t in targets if targets.count(t) > 1), None)
    if duplicate is not None:
        raise RunnerOptionError(f"PYTHON_RUNNER_OTHER_OPTIONS: two mounts at {duplicate}")
    return RunnerOptions(tuple(mounts), extra_env, tuple(hosts), tuple(notes))


def _option_list(raw: str) -> list[str]:
    """Upstream's syntax: a Python list literal of strings (upstream ignores a bad one silently; refused here)."""
    if not raw.strip():
        return []
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise RunnerOptionError("PYTHON_RUNNER_OTHER_OPTIONS must be a Python list of strings, "
                                "like [\"--volume=/opt/files:/files:ro\"]") from None
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise RunnerOptionError("PYTHON_RUNNER_OTHER_OPTIONS must be a Python list of strings, "
                                "like [\"--volume=/opt/files:/files:ro\"]")
    for item in value:
        if "=" not in item or not item.startswith("-"):
            raise _refuse(item, "write each option as --flag=value, in one list item")
    return list(value)


def _refuse(option: str, why: str) -> RunnerOptionError:
    shown = option if len(option) <= 120 else option[:117] + "..."
    return RunnerOptionError(f"PYTHON_RUNNER_OTHER_OPTIONS: {shown!r} is refused: {why}")


def _volume(value: str, protected: tuple[str, ...]) -> BindMount:
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise _refuse(f"--volume={value}", "use --volume=/host/path:/container/path[:ro|rw]")
    options = set(parts[2].split(",")) if len(parts) == 3 else set()
    unknown = options - {"ro", "rw", "z", "Z", "readonly"}
    if unknown:
        raise _refuse(f"--volume={value}", f"unsupported mount option(s) {', '.join(sorted(unknown))}")
    return _bind(f"--volume={value}", parts[0], parts[1], writable="rw" in options, protected=protected)


def _mount(value: str, protected: tuple[str, ...]) -> BindMount:
    fields: dict[str, str] = {}
    for item in value.split(","):
        key, _, text = item.partition("=")
        fields[key.strip()] = text.strip() if text else "true"
    option = f"--mount={value}"
    if fields.get("type") != "bind":
        raise _refuse(option, "only type=bind mounts are supported (runners have /tmp as their scratch space)")
    source = fields.get("source") or fields.get("src") or ""
    target = fields.get("target") or fields.get("destination") or fields.get("dst") or ""
    readonly = fields.get("readonly", fields.get("ro", "false")).lower() in _TRUE
    writable = fields.get("rw", "false").lower() in _TRUE and not readonly
    unknown = set(fields) - {"type", "source", "src", "target", "destination", "dst", "readonly", "ro", "rw",
                             "bind-propagation", "relabel"}
    if unknown:
        raise _refuse(option, f"unsupported mount field(s) {', '.join(sorted(unknown))}")
    return _bind(option, source, target, writable=writable, protected=protected)


def _bind(option: str, source: str, target: str, writable: bool, protected: tuple[str, ...]) -> BindMount:
    """Read-only unless the admin wrote rw; never a source that exposes the host or the sandbox."""
    if not source.startswith("/") or not target.startswith("/"):
        raise _refuse(option, "source and target must be absolute paths (named volumes are not supported)")
    real = os.path.realpath(source)
    try:
        mode = os.stat(real).st_mode
    except OSError as exc:
        raise _refuse(option, f"{source}: {exc.strerror}") from None
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise _refuse(option, f"{source} is neither a directory nor a file")
    forbidden = PROTECTED_SOURCES + tuple(os.path.realpath(p) for p in protected if p)
    for path in forbidden:
        if _within(real, path) and not any(_within(real, ok) for ok in ALLOWED_UNDER_PROTECTED):
            raise _refuse(option, f"{real} is (under) {path}, which would give runners the host or the sandbox")
        if _within(path, real):
            raise _refuse(option, f"{real} contains {path}, which would give runners the host or the sandbox")
    clean = posixpath.normpath(target)
    if clean in SHADOWED or any(_within(clean, t) for t in PROTECTED_TARGETS):
        raise _refuse(option, f"the target {clean} is where the runner's own isolation lives")
    return BindMount(real, clean, writable)


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _host(option: str, value: str, network: str) -> str:
    import ipaddress

    name, sep, address = value.partition(":")
    if not sep or not _HOST_NAME.fullmatch(name):
        raise _refuse(option, "use --add-host=name:ip")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise _refuse(option, f"{address!r} is not an IP address") from None
    if network != "open":
        raise _refuse(option, "extra hosts need PYTHON_RUNNER_NETWORK=open (the seatable mode resolves names "
                              "in the sandbox's proxy)")
    return f"{name}:{address}"


def _hardening_switches(env: Mapping[str, str]) -> list[str]:
    """Upstream's opt-in hardening is always on here: true is accepted, an explicit false refused."""
    notes = []
    for name, what in (("PYTHON_RUNNER_READ_ONLY_FILESYSTEM", "a read-only root (scripts write to /tmp)"),
                       ("PYTHON_RUNNER_NO_NEW_PRIVILEGES", "no-new-privileges")):
        value = env.get(name, "").strip().lower()
        if value in _FALSE:
            raise RunnerOptionError(f"{name}={env[name]}: runners always have {what} here; "
                                    "remove the setting or set it to true")
        if value and value not in _TRUE:
            raise RunnerOptionError(f"{name}={env[name]!r}: use true or false")
    caps = [c.strip() for c in env.get("PYTHON_RUNNER_DROPPED_CAPABILITIES", "").split(",") if c.strip()]
    bad = [c for c in caps if not _CAPABILITY.fullmatch(c)]
    if bad:
        raise RunnerOptionError(f"PYTHON_RUNNER_DROPPED_CAPABILITIES: {bad[0]!r} is not a capability name")
    if caps:
        notes.append(f"PYTHON_RUNNER_DROPPED_CAPABILITIES={','.join(caps)}: runners have no capabilities at all")
    return notes


def _identity(env: Mapping[str, str]) -> list[str]:
    """Runners never run as root; each run has a host uid of its own, so the setting can only say "not root"."""
    notes = []
    for name in ("PYTHON_RUNNER_UID", "PYTHON_RUNNER_GID", "PYTHON_RUNNER_USER", "PYTHON_RUNNER_GROUP"):
        value = env.get(name, "").strip()
        if not value:
            continue
        if value in ("0", "root"):
            raise RunnerOptionError(f"{name}={value}: runners never run as root here; remove the setting")
        notes.append(f"{name}={value}: runners run as an unprivileged uid of their own per run; the setting "
                     "has no further effect")
    return notes
