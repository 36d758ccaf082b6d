"""The runner's network, per PYTHON_RUNNER_NETWORK: its part of the container spec, and the open mode's rules.

- none and seatable: no interface but loopback (seatable's one way out is the egress proxy's socket).
- open: a rootless slirp4netns interface (user-mode NAT by a process of the sandbox user; nothing privileged),
  and an nftables table in the runner's own network namespace, written by the netguard helper from outside
  the runner (sandbox.network_rules says what it allows). The table is installed while the runner waits in
  the pool; when a job arrives only its own SeaTable server is added, and only when that server is not
  reachable anyway (a private or host address). After the run the refused attempts are read back for the
  run's report and the /health counters.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sandbox.config import SandboxConfig
from sandbox.egress_policy import Address, EgressPolicy, allow_entries, normalise_ip, parse_host, split_authority
from sandbox.netguard import NetGuard, NetGuardError
from sandbox.network_rules import SLIRP_DNS, Destination, Plan, allow_elements, open_by_default, report_lines, ruleset

log = logging.getLogger(__name__)

# none and seatable: loopback only; the image's empty resolv.conf and loopback-only hosts.
CLOSED = {"netns": {"nsmode": "none"}, "use_image_resolve_conf": True, "use_image_hosts": True}
RESOLVE_TTL = 30.0

Resolver = Callable[[str], list[Address]]


def open_spec(resolvers: Iterable[Address]) -> dict[str, Any]:
    """The open mode's container network: slirp4netns without the host's loopback, the runner's resolvers."""
    return {
        "netns": {"nsmode": "slirp4netns"},
        "network_options": {"slirp4netns": ["allow_host_loopback=false", "enable_ipv6=true"]},
        "dns_server": [str(ip) for ip in resolvers],
        "dns_search": ["."],  # no search domains of the host's
        "use_image_resolve_conf": False,
        "use_image_hosts": True,
    }


def host_addresses() -> tuple[Address, ...]:
    """Every address of this host's interfaces: slirp4netns connects from here, so each would reach the host."""
    import psutil  # here: the scheduler's CLI imports this module's neighbours without needing it

    found: list[Address] = []
    for addresses in psutil.net_if_addrs().values():
        for entry in addresses:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    found.append(ipaddress.ip_address(entry.address.split("%")[0]))
                except ValueError:
                    continue
    return tuple(dict.fromkeys(found))


def system_resolver(name: str) -> list[Address]:
    infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(normalise_ip(ipaddress.ip_address(str(i[4][0]).split("%")[0])) for i in infos))


class CachedResolver:
    """Names of allow entries and SeaTable servers, resolved host-side; kept briefly (the warm path)."""

    def __init__(self, resolve: Resolver = system_resolver, ttl: float = RESOLVE_TTL) -> None:
        self._resolve = resolve
        self.ttl = ttl
        self._cache: dict[str, tuple[float, list[Address]]] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str) -> list[Address]:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(name)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            addresses = self._resolve(name)
        except (OSError, UnicodeError):
            addresses = []
        with self._lock:
            self._cache[name] = (now + self.ttl, addresses)
        return addresses


def destinations(entry: str, resolve: Resolver) -> list[Destination]:
    """An allow entry as table entries: a URL is TCP to its port, host:port both protocols, a bare host all ports."""
    if "://" in entry:
        url = urlsplit(entry)
        port = url.port or {"http": 80, "https": 443}.get(url.scheme.lower(), 0)
        if not port or not url.hostname:
            return []  # not an http(s) URL: allows nothing
        host, protocol = url.hostname, "tcp"
    else:
        text = f"[{entry}]" if entry.count(":") > 1 and not entry.startswith("[") else entry
        host, port = split_authority(text, default_port=0)
        protocol = None
    name, literal = parse_host(host)
    addresses = [literal] if literal is not None else resolve(name)
    return [Destination(ip, protocol, port or None) for ip in addresses]


@dataclass
class _Runner:
    plan: Plan
    pid: int
    conmon_pid: int
    netns_ino: int  # its network namespace, so a restarted helper adopts exactly that one
    generation: int  # of the helper that holds it
    armed: bool = False


@dataclass
class OpenNetwork:
    """The open mode for one sandbox service: one NetGuard helper, one table per runner."""

    admin_allow: str = ""
    resolvers: tuple[Address, ...] = (SLIRP_DNS,)
    protected: tuple[tuple[Address, int], ...] = ()  # the scheduler's endpoints
    protected_ports: tuple[int, ...] = ()  # the scheduler's and this sandbox's ports, on every host address
    guard: NetGuard = field(default_factory=NetGuard)
    resolve: Resolver = field(default_factory=CachedResolver)
    addresses: Callable[[], tuple[Address, ...]] = host_addresses
    _runners: dict[str, _Runner] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _totals: dict[str, int] = field(default_factory=lambda: {"refused": 0, "destinations_refused": 0,
                                                               "runs": 0, "failures": 0, "adopted": 0,
                                                               "work_us": 0, "setup_us": 0, "setups": 0})

    def __post_init__(self) -> None:
        self._admin_entries = allow_entries(self.admin_allow)

    def spec(self) -> dict[str, Any]:
        return open_spec(self.resolvers)

    def plan(self) -> Plan:
        """What a new runner's table holds: this host's addresses now, the admin's list resolved now."""
        allowed = [d for entry in self._admin_entries for d in destinations(entry, self.resolve)]
        hosts = self.addresses()
        protected = self.protected + tuple((ip, port) for ip in hosts for port in self.protected_ports)
        return Plan(resolvers=self.resolvers, host_addresses=hosts, protected=tuple(dict.fromkeys(protected)),
                    allowed=tuple(allowed))

    def attach(self, container: str, pid: int, conmon_pid: int) -> None:
        """Install the runner's table (in the pool, before any job): until this returns, no job is sent."""
        started = time.perf_counter()
        plan = self.plan()
        try:
            answer = self.guard.request("open", container, pid=pid, userns_pid=conmon_pid, nft=ruleset(plan))
        except NetGuardError:
            self._count("failures")
            raise
        self._count("setup_us", int((time.perf_counter() - started) * 1e6))
        self._count("setups")
        with self._lock:
            self._runners[container] = _Runner(plan, pid, conmon_pid, int(answer["ino"]), self.guard.generation)

    def arm(self, container: str, egress: EgressPolicy | None) -> None:
        """The job's own destinations (its SeaTable server): added only where the table would refuse them."""
        with self._lock:
            runner = self._runners.get(container)
        if runner is None:
            raise NetGuardError("the runner has no network rules")
        if runner.armed:
            raise NetGuardError("the runner's network is already armed")
        runner.armed = True
        started = time.perf_counter()
        try:
            self._arm(container, runner, egress)
        finally:
            self._count("work_us", int((time.perf_counter() - started) * 1e6))

    def _arm(self, container: str, runner: _Runner, egress: EgressPolicy | None) -> None:
        if runner.generation != self.guard.current():  # the helper was restarted: hold the runner again
            self.guard.request("open", container, pid=runner.pid, userns_pid=runner.conmon_pid,
                               expect_ino=runner.netns_ino, nft="")
            runner.generation = self.guard.generation
            self._count("adopted")
        extra = [e for e in (egress.allow if egress is not None else ()) if e not in self._admin_entries]
        wanted = [d for entry in extra for d in destinations(entry, self.resolve)
                  if not open_by_default(d.address, runner.plan)]
        if wanted:
            self.guard.request("apply", container, nft=allow_elements(wanted))
            runner.plan = Plan(runner.plan.resolvers, runner.plan.host_addresses, runner.plan.protected,
                               runner.plan.allowed + tuple(wanted))

    def report(self, container: str) -> list[str]:
        """The run's refused destinations, one line each; counted for /health."""
        with self._lock:
            runner = self._runners.get(container)
        if runner is None:
            return []
        started = time.perf_counter()
        try:
            answer = self.guard.request("refused", container)
        except NetGuardError as exc:
            log.warning("runner %s: refused connections unknown: %s", container[:12], exc)
            return []
        finally:
            self._count("work_us", int((time.perf_counter() - started) * 1e6))
        refused = [(str(a), str(p), int(port), int(n)) for a, p, port, n in answer.get("refused", [])]
        with self._lock:
            self._totals["refused"] += int(answer.get("total", 0))
            self._totals["destinations_refused"] += len(refused)
            self._totals["runs"] += 1
        return report_lines(sorted(refused, key=lambda r: (-r[3], r[0], r[2], r[1])), runner.plan)

    def release(self, container: str) -> None:
        with self._lock:
            runner = self._runners.pop(container, None)
        if runner is None:
            return
        try:
            self.guard.request("close", container)
        except NetGuardError as exc:
            log.warning("runner %s: netguard close failed: %s", container[:12], exc)

    def stats(self) -> dict[str, float]:
        """For /health. per_run_ms: the work on a run's own path (its rules update, the read-back); setup_ms:
        writing a new runner's table (while it waits in the pool, or on the cold path)."""
        with self._lock:
            totals = dict(self._totals)
            runners = len(self._runners)
        work, setup, setups = totals.pop("work_us"), totals.pop("setup_us"), totals.pop("setups")
        per_run = round(work / 1000 / totals["runs"], 2) if totals["runs"] else 0.0
        per_setup = round(setup / 1000 / setups, 2) if setups else 0.0
        return {**totals, "runners": runners, "per_run_ms": per_run, "setup_ms": per_setup}

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._totals[name] += amount

    def stop(self) -> None:
        self.guard.stop()


def protected_endpoints(scheduler_url: str, sandbox_bind: str,
                        resolve: Resolver) -> tuple[tuple[tuple[Address, int], ...], tuple[int, ...]]:
    """The scheduler's endpoints, and the ports (scheduler's, this sandbox's) to refuse on every host address."""
    url = urlsplit(scheduler_url)
    scheduler_port = url.port or (443 if url.scheme == "https" else 80)
    addresses: list[Address] = []
    if url.hostname:
        name, literal = parse_host(url.hostname)
        addresses = [literal] if literal is not None else resolve(name)
    _host, _, bind_port = sandbox_bind.rpartition(":")
    ports = (scheduler_port, *([int(bind_port)] if bind_port.isdigit() else []))
    return tuple((ip, port) for ip in addresses for port in ports), tuple(dict.fromkeys(ports))


def start_open_network(config: SandboxConfig) -> OpenNetwork:
    """The open mode for a sandbox config, its rules helper started (NetGuardError when the host cannot run it)."""
    resolve = CachedResolver()
    protected, ports = protected_endpoints(config.scheduler_url, config.bind, resolve)
    resolvers = tuple(ipaddress.ip_address(ip) for ip in config.runner_dns) or (SLIRP_DNS,)
    network = OpenNetwork(admin_allow=config.egress_allow, resolvers=resolvers, protected=protected,
                          protected_ports=ports, resolve=resolve)
    try:
        network.guard.start()
    except (NetGuardError, OSError) as exc:
        raise NetGuardError(f"PYTHON_RUNNER_NETWORK=open: {exc}; install nftables and python3-nftables "
                            "(seatable-sandbox host-setup checks), or choose seatable or none") from None
    return network
