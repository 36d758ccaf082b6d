"""Network namespaces as separate hosts on one machine: each with its own address on a private bridge.

    root namespace: bridge spc<tag>br, 10.213.N.1/24 (the "LAN": schedulers, SeaTable stand-in, MariaDB side)
        |-- veth spc<tag>h1 <-> eth0 in namespace spc-<tag>-<pid>-1, 10.213.N.11/24, default route via .1
        |-- veth spc<tag>h2 <-> eth0 in namespace spc-<tag>-<pid>-2, 10.213.N.12/24
        ...
A process started with `Namespace.command()` (`ip netns exec NAME setpriv ... -- ...`) sees only that
namespace's loopback and eth0, as a process on another host would; Unix sockets (the rootless Podman API
socket) stay reachable because they are files. `cut()` sets the host end of the veth down: the namespace
loses its link (its peers see connect timeouts and silent drops), `restore()` brings it back with the same
address. Everything is made with `ip` (iproute2) and removed by `LAN.remove()`; a harness run that was
killed is cleaned up by the next one (`reap_stale`, by the owner pid in the namespace names and the
bridge's alias).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.harness import pid_alive

OWNER_ALIAS = "seatable-cluster owner="
NETNS_DIR = Path("/run/netns")


class NetworkError(RuntimeError):
    pass


def ip(*args: str, check: bool = True) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def _used_subnets() -> set[int]:
    """Third octets of 10.213.X.0/24 already routed on this machine (another harness run's bridge)."""
    used = set()
    for line in ip("-4", "route", "show").splitlines():
        match = re.match(r"10\.213\.(\d+)\.", line)
        if match:
            used.add(int(match.group(1)))
    return used


@dataclass
class Namespace:
    """One "host": a network namespace with one interface (eth0) on the LAN."""

    name: str
    host_link: str  # the veth end in the root namespace, on the bridge
    address: str

    def command(self, argv: list[str], user: str | None = None) -> list[str]:
        """argv run inside this namespace, as `user` when given (root otherwise). `ip netns exec` and setpriv
        both exec, so the process started is argv's own and a signal reaches it as systemd would send it;
        runuser would stay in between and SIGKILL its child two seconds after passing on a SIGTERM."""
        inner = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *argv] if user else argv
        return ["ip", "netns", "exec", self.name, *inner]

    def cut(self) -> None:
        """The host's cable pulled: its link goes down, its address stays configured."""
        ip("link", "set", self.host_link, "down")

    def restore(self) -> None:
        ip("link", "set", self.host_link, "up")

    @property
    def is_cut(self) -> bool:
        flags = re.search(r"<([^>]*)>", ip("-o", "link", "show", self.host_link))
        return flags is None or "UP" not in flags.group(1).split(",")


@dataclass
class LAN:
    """A bridge in the root namespace and the namespaces on it; `add()` one per host, `remove()` at the end."""

    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    subnet: int = -1
    namespaces: list[Namespace] = field(default_factory=list)
    created: bool = False

    @property
    def bridge(self) -> str:
        return f"spc{self.tag}br"

    @property
    def gateway(self) -> str:
        """The root namespace's address on the LAN: where services the hosts reach listen."""
        return f"10.213.{self.subnet}.1"

    def create(self) -> LAN:
        reap_stale()
        free = sorted(set(range(1, 255)) - _used_subnets())
        if not free:
            raise NetworkError("no free 10.213.X.0/24 subnet for the cluster LAN")
        self.subnet = random.choice(free)
        ip("link", "add", self.bridge, "type", "bridge")
        self.created = True
        try:
            ip("link", "set", "dev", self.bridge, "alias", f"{OWNER_ALIAS}{os.getpid()}")
            ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
        except NetworkError:
            self.remove()
            raise
        return self

    def add(self) -> Namespace:
        """A new host on the LAN, addresses .11, .12, ... in order."""
        index = len(self.namespaces) + 1
        ns = Namespace(f"spc-{self.tag}-{os.getpid()}-{index}", f"spc{self.tag}h{index}",
                       f"10.213.{self.subnet}.{10 + index}")
        ip("netns", "add", ns.name)
        self.namespaces.append(ns)
        ip("link", "add", ns.host_link, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
        ip("link", "set", ns.host_link, "master", self.bridge, "up")
        ip("-n", ns.name, "addr", "add", f"{ns.address}/24", "dev", "eth0")
        ip("-n", ns.name, "link", "set", "eth0", "up")
        ip("-n", ns.name, "link", "set", "lo", "up")
        ip("-n", ns.name, "route", "add", "default", "via", self.gateway)
        return ns

    def remove(self) -> None:
        """Delete the namespaces (their veth pairs go with them) and the bridge; safe to call twice."""
        for ns in self.namespaces:
            ip("netns", "del", ns.name, check=False)
            ip("link", "del", ns.host_link, check=False)
        self.namespaces.clear()
        if self.created:
            ip("link", "del", self.bridge, check=False)
            self.created = False

    def __enter__(self) -> LAN:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.remove()


def reap_stale() -> list[str]:
    """Remove namespaces and bridges of harness runs whose owner process is gone; returns their names."""
    reaped = []
    if NETNS_DIR.is_dir():
        for path in NETNS_DIR.iterdir():
            match = re.fullmatch(r"spc-[0-9a-f]{4}-(\d+)-\d+", path.name)
            if match and not pid_alive(int(match.group(1))):
                ip("netns", "del", path.name, check=False)
                reaped.append(path.name)
    for block in ip("-o", "link", "show", "type", "bridge").splitlines():
        match = re.search(r"^\d+: (spc[0-9a-f]{4}br)[:@].*alias " + re.escape(OWNER_ALIAS) + r"(\d+)", block)
        if match and not pid_alive(int(match.group(2))):
            ip("link", "del", match.group(1), check=False)
            reaped.append(match.group(1))
    return reaped


def namespace_of(pid: int) -> str | None:
    """The named namespace a process runs in (None: the root namespace or an unnamed one)."""
    with contextlib.suppress(OSError):
        target = os.stat(f"/proc/{pid}/ns/net")
        if NETNS_DIR.is_dir():
            for path in NETNS_DIR.iterdir():
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                    return path.name
    return None
