"""A network lab on this machine: one network namespace made by the test, reached from the host over a veth pair.

Rootless runners in the open mode reach the world through slirp4netns, which connects from the host's network
namespace. No traffic may leave this machine, so the "world" is this namespace: it holds an address outside
every private and reserved range (`public`, from 192.175.48.0/24, IANA's AS112 direct-delegation block, which is
globally reachable) and a private one (`private`, in 10.0.0.0/8), each routed to it by a /32 route on the host.
Before a test uses an address, `assert_local` proves that the host routes it into the lab, so a missing route
can never send a packet off the machine. Servers run inside the namespace in one child process
(tests.support.netlab_servers) that reports what it receives as JSON lines.
"""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import terminate

REPO = Path(__file__).resolve().parents[2]
AS112_BLOCK = ipaddress.ip_network("192.175.48.0/24")
AS112_SERVERS = {1, 6, 42}  # prisoner, blackhole-1, blackhole-2: never used here


def _ip(*args: str, netns: str = "") -> str:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


@dataclass
class NetLab:
    name: str = field(default_factory=lambda: f"splab-{secrets.token_hex(3)}")
    public: str = ""
    private: str = ""
    host_side: str = ""  # the host's end of the veth pair: an address of this host
    lab_side: str = ""
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="netlab-")))
    servers: subprocess.Popen[str] | None = None
    events: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    seen: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        rand = secrets.randbelow(200) + 20
        host_octet = secrets.choice([n for n in range(100, 250) if n not in AS112_SERVERS])
        self.public = str(AS112_BLOCK[host_octet])
        self.private = f"10.{rand}.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
        self.host_side = f"198.18.{rand}.1"
        self.lab_side = f"198.18.{rand}.2"
        self.veth = f"v{self.name[-6:]}h"

    def create(self) -> NetLab:
        for address in (self.public, self.private):
            if "dev lo" in _ip("route", "get", address) or self._routed_here(address):
                raise RuntimeError(f"{address} is already in use on this host")
        _ip("netns", "add", self.name)
        _ip("link", "add", self.veth, "type", "veth", "peer", "name", "lab0", "netns", self.name)
        _ip("addr", "add", f"{self.host_side}/30", "dev", self.veth)
        _ip("link", "set", self.veth, "up")
        _ip("addr", "add", f"{self.lab_side}/30", "dev", "lab0", netns=self.name)
        for address in (self.public, self.private):
            _ip("addr", "add", f"{address}/32", "dev", "lo", netns=self.name)
        _ip("link", "set", "lo", "up", netns=self.name)
        _ip("link", "set", "lab0", "up", netns=self.name)
        # No default route: the lab answers the host's end of the veth (where slirp4netns connects from) and
        # sends nothing anywhere else.
        for address in (self.public, self.private):
            _ip("route", "add", f"{address}/32", "via", self.lab_side, "dev", self.veth)
        self.assert_local(self.public, self.private)
        return self

    def _routed_here(self, address: str) -> bool:
        return f"dev {self.veth}" in _ip("route", "get", address)

    def assert_local(self, *addresses: str) -> None:
        """Every address goes into the lab, never off this machine."""
        for address in addresses:
            assert self._routed_here(address), f"{address} is not routed into the lab: refusing to send to it"

    def start_servers(self, cert: str, key: str) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
        self.servers = subprocess.Popen(
            ["ip", "netns", "exec", self.name, sys.executable, "-m", "tests.support.netlab_servers",
             "--public", self.public, "--private", self.private, "--cert", cert, "--key", key],
            stdout=subprocess.PIPE, stderr=open(self.workdir / "servers.log", "w"), text=True, env=env,
            cwd=str(REPO), start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_event(lambda e: e.get("event") == "ready", timeout=30)

    def _read(self) -> None:
        assert self.servers is not None and self.servers.stdout is not None
        for line in self.servers.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                continue

    def wait_event(self, match: Any, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for event in self.seen:
            if match(event):
                return event
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log = (self.workdir / "servers.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"no such lab event within {timeout} s; seen {self.seen}\n{log}")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(event)
            if match(event):
                return event

    def drain(self) -> list[dict[str, Any]]:
        while True:
            try:
                self.seen.append(self.events.get_nowait())
            except queue.Empty:
                return list(self.seen)

    def destroy(self) -> None:
        if self.servers is not None:
            terminate(self.servers, timeout=10)
        for address in (self.public, self.private):
            subprocess.run(["ip", "route", "del", f"{address}/32"], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def lab_tls() -> Iterator[tuple[str, str]]:
    """A self-signed certificate for the lab's names, readable by the sandbox user (the admin's CA file)."""
    path = Path(tempfile.mkdtemp(prefix="netlab-ca-"))
    path.chmod(0o755)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(path / "key.pem"), "-out", str(path / "cert.pem"), "-subj", "/CN=lab.test",
                    "-addext", "subjectAltName=DNS:internet.lab.test"], check=True, capture_output=True)
    (path / "cert.pem").chmod(0o644)
    yield str(path / "cert.pem"), str(path / "key.pem")
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def netlab(lab_tls: tuple[str, str]) -> Iterator[NetLab]:
    if os.geteuid() != 0:
        pytest.skip("the network lab needs root (ip netns)")
    lab = NetLab().create()
    try:
        lab.start_servers(*lab_tls)
        yield lab
    finally:
        lab.destroy()
