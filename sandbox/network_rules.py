"""The open network's rules: what a runner may reach, as one nftables table in the runner's own netns.

Pure: builds nft text and report lines, opens no socket. The rules match the destination address of each new
connection or datagram, so every spelling of an address (IPv4-mapped IPv6, a name resolved by the runner, DNS
rebinding) meets the same check: the address actually connected to. Order inside the output chain:
loopback and established traffic pass; DNS only to the runner's resolvers; the sandbox's and scheduler's
endpoints never; then listed destinations (the admin's allow list, the run's SeaTable server); then DNS to any
other server (so an admin's resolver, PYTHON_RUNNER_DNS, cannot be bypassed), this host's own addresses and
every private or special-purpose range are refused; everything else (the internet) passes. A refused attempt
is added to a dynamic set (address . protocol . port, with a counter) and answered at once (TCP reset, or an
ICMP error that makes UDP sends fail), so the sandbox can report it after the run.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from sandbox.egress_policy import LINK_LOCAL, LOOPBACK, PRIVATE, REFUSED_LINE, RESERVED, Address, address_kind

TABLE = "inet runner"
SLIRP_HOST = ipaddress.IPv4Address("10.0.2.2")  # slirp4netns's alias for the host's loopback
SLIRP_DNS = ipaddress.IPv4Address("10.0.2.3")  # slirp4netns's DNS forwarder (to the host's resolvers)
REFUSED_SET_SIZE = 4096

# IANA's special-purpose registries and RFC 1918: never the internet.
INTERNAL_V4 = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
)
# IPv6: only global unicast (2000::/3) is the internet, less its special blocks (Teredo and other IETF
# assignments, documentation, 6to4 which embeds IPv4). Outside 2000::/3: loopback, IPv4-mapped and NAT64
# forms, unique-local (fc00::/7), link-local (fe80::/10), multicast.
INTERNAL_V6 = ("::/3", "4000::/2", "8000::/1", "2001::/23", "2001:db8::/32", "2002::/16", "3fff::/20")

HOST_ADDRESS = "address of this host"
PROTECTED = "sandbox or scheduler port"
HOST_LOOPBACK = "this host's loopback"
OTHER_DNS = "DNS server other than the runner's resolver"


@dataclass(frozen=True)
class Destination:
    """A listed destination: every port of an address (port None), or one protocol and port."""

    address: Address
    protocol: str | None = None  # tcp, udp, or None for both
    port: int | None = None


@dataclass(frozen=True)
class Plan:
    """Everything one runner's table is made from."""

    resolvers: tuple[Address, ...] = (SLIRP_DNS,)
    host_addresses: tuple[Address, ...] = ()
    protected: tuple[tuple[Address, int], ...] = ()  # never reachable, whatever is listed
    allowed: tuple[Destination, ...] = ()


def _family(ip: Address) -> str:
    return "4" if ip.version == 4 else "6"


def _elements(items: Iterable[str]) -> str:
    unique = list(dict.fromkeys(items))
    return f" elements = {{ {', '.join(unique)} }};" if unique else ""


def _sets(plan: Plan, v: str) -> list[str]:
    addr = "ipv4_addr" if v == "4" else "ipv6_addr"
    mine = [ip for ip in plan.host_addresses if _family(ip) == v]
    dns = [ip for ip in plan.resolvers if _family(ip) == v]
    protected = [f"{ip} . {port}" for ip, port in plan.protected if _family(ip) == v]
    every_port = [str(d.address) for d in plan.allowed if _family(d.address) == v and d.port is None]
    ports = [f"{d.address} . {proto} . {d.port}" for d in plan.allowed
             if _family(d.address) == v and d.port is not None
             for proto in ([d.protocol] if d.protocol else ["tcp", "udp"])]
    internal = INTERNAL_V4 if v == "4" else INTERNAL_V6
    return [
        f"  set refused{v} {{ type {addr} . inet_proto . inet_service; flags dynamic; size {REFUSED_SET_SIZE};"
        " counter; }",
        f"  set resolvers{v} {{ type {addr};{_elements(map(str, dns))} }}",
        f"  set protected{v} {{ type {addr} . inet_service;{_elements(protected)} }}",
        f"  set allow_hosts{v} {{ type {addr};{_elements(every_port)} }}",
        f"  set allow{v} {{ type {addr} . inet_proto . inet_service;{_elements(ports)} }}",
        f"  set host{v} {{ type {addr};{_elements(map(str, mine))} }}",
        f"  set internal{v} {{ type {addr}; flags interval;{_elements(internal)} }}",
    ]


def _checks(v: str) -> list[str]:
    ip = "ip" if v == "4" else "ip6"
    return [
        f"    meta l4proto {{ tcp, udp }} {ip} daddr @resolvers{v} th dport 53 accept",
        f"    meta l4proto {{ tcp, udp }} {ip} daddr . th dport @protected{v} goto refuse",
        f"    {ip} daddr @allow_hosts{v} accept",
        f"    meta l4proto {{ tcp, udp }} {ip} daddr . meta l4proto . th dport @allow{v} accept",
        f"    meta nfproto ipv{v} meta l4proto {{ tcp, udp }} th dport 53 goto refuse",
        f"    {ip} daddr @host{v} goto refuse",
        f"    {ip} daddr @internal{v} goto refuse",
    ]


def ruleset(plan: Plan) -> str:
    """The whole table, applied once while the runner waits in the pool (one nft transaction)."""
    lines = [f"table {TABLE} {{", "  counter refused { }", *_sets(plan, "4"), *_sets(plan, "6"),
             "  chain output {", "    type filter hook output priority 0; policy accept;",
             '    oif "lo" accept', "    ct state established,related accept",
             # IPv6 neighbour discovery and multicast listener reports to the slirp4netns link (the kernel's)
             "    icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-report,"
             " mld2-listener-report } accept",
             *_checks("4"), *_checks("6"), "  }",
             "  chain refuse {",
             '    counter name "refused"',
             "    meta nfproto ipv4 meta l4proto { tcp, udp } add @refused4 { ip daddr . meta l4proto . th dport }",
             "    meta nfproto ipv6 meta l4proto { tcp, udp } add @refused6 { ip6 daddr . meta l4proto . th dport }",
             # separate rules: a full set stops only the rule that adds to it, never the refusal
             "    meta l4proto tcp reject with tcp reset",
             "    reject with icmpx admin-prohibited",
             "  }", "}"]
    return "\n".join(lines) + "\n"


def allow_elements(destinations: Iterable[Destination]) -> str:
    """nft commands that add a run's own destinations (its SeaTable server) to a waiting runner's table."""
    commands = []
    for d in destinations:
        v = _family(d.address)
        if d.port is None:
            commands.append(f"add element {TABLE} allow_hosts{v} {{ {d.address} }}")
            continue
        for proto in [d.protocol] if d.protocol else ["tcp", "udp"]:
            commands.append(f"add element {TABLE} allow{v} {{ {d.address} . {proto} . {d.port} }}")
    return "\n".join(commands) + ("\n" if commands else "")


_INTERNAL = [ipaddress.ip_network(net) for net in (*INTERNAL_V4, *INTERNAL_V6)]


def open_by_default(ip: Address, plan: Plan) -> bool:
    """Would the table let a connection to ip through without a listed entry? (The same ranges as the table.)"""
    return ip not in plan.host_addresses and not any(ip in net for net in _INTERNAL)


def reason(ip: Address, port: int, plan: Plan) -> str:
    """Why the table refused ip:port, in the words of the run's report."""
    if (ip, port) in plan.protected:
        return PROTECTED
    if ip == SLIRP_HOST:
        return HOST_LOOPBACK
    if port == 53 and open_by_default(ip, plan):
        return OTHER_DNS
    if ip in plan.host_addresses:
        return HOST_ADDRESS
    kind = address_kind(ip)
    if kind in (LOOPBACK, LINK_LOCAL, PRIVATE):
        return kind
    return RESERVED


def report_lines(refused: Iterable[tuple[str, str, int, int]], plan: Plan, limit: int = 20) -> list[str]:
    """One line per refused destination, repeats counted: `egress refused: 10.1.2.3:25 (private address)`;
    past `limit` destinations one line says how many more there were."""
    refused = list(refused)
    lines = []
    for address, proto, port, count in refused[:limit]:
        ip = ipaddress.ip_address(address)
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        target = f"{host}:{port}" + ("/udp" if proto == "udp" else "")
        line = REFUSED_LINE.format(target=target, reason=reason(ip, port, plan))
        lines.append(line if count <= 1 else f"{line} ({count} times)")
    if len(refused) > limit:
        lines.append(f"egress: {len(refused) - limit} more refused destinations not shown")
    return lines
