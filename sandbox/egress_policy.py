"""Egress policy: which destinations one run may reach, decided host-side.

Names are resolved here, by the policy's resolver, and every resolved address is normalised
(IPv4-mapped IPv6, decimal/octal/hex IPv4, IPv4 embedded in NAT64/6to4) before it is classified,
so no spelling of loopback or the metadata address slips through. The caller connects to exactly
the addresses returned (no second lookup, no DNS rebinding). Pure: no sockets are opened here.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

# What users see: one line per refused destination in the run's output, and the
# X-Egress-Refused header of the proxy's answer.
REFUSED_LINE = "egress refused: {target} ({reason})"
FAILED_LINE = "egress failed: {target} ({reason})"
NOT_ARMED = "not armed"
NOT_ALLOWED = "not on the allow list"
LOOPBACK = "loopback address"
LINK_LOCAL = "link-local address"
RESERVED = "reserved address"
PRIVATE = "private address"
TOO_MANY = "too many connections"
UNRESOLVED = "name does not resolve"
UNREACHABLE = "connection failed"

MODES = ("seatable", "open")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list[tuple[Any, ...]]]

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_NUMERIC_V4 = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}")
_net = ipaddress.ip_network
_LOOPBACK_V4, _LINK_LOCAL_V4 = _net("127.0.0.0/8"), _net("169.254.0.0/16")
_RESERVED_V4 = (_net("0.0.0.0/8"), _net("224.0.0.0/4"), _net("240.0.0.0/4"))
_EMBEDS_V4 = (_net("64:ff9b::/96"), _net("64:ff9b:1::/48"), _net("::/96"))  # NAT64, IPv4-compatible


class Refused(Exception):
    """A destination the policy does not allow; `reason` is one of the constants above."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class BadRequest(Exception):
    """Not a proxy request this proxy understands (answered 400)."""


def normalise_ip(ip: Address) -> Address:
    """IPv4-mapped IPv6 is the IPv4 address; compare and check that one."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _kind_v4(ip: ipaddress.IPv4Address) -> str | None:
    if ip in _LOOPBACK_V4:
        return LOOPBACK
    if ip in _LINK_LOCAL_V4:
        return LINK_LOCAL
    if any(ip in net for net in _RESERVED_V4):
        return RESERVED
    return None if ip.is_global else PRIVATE  # 10/8, 172.16/12, 192.168/16, 100.64/10, ...


def address_kind(ip: Address) -> str | None:
    """The most dangerous class the address (or an IPv4 address embedded in it) falls in; None = public."""
    ip = normalise_ip(ip)
    if isinstance(ip, ipaddress.IPv4Address):
        return _kind_v4(ip)
    kinds: list[str | None] = []
    if ip.is_loopback:
        kinds.append(LOOPBACK)
    elif ip.is_link_local:
        kinds.append(LINK_LOCAL)
    elif ip.is_unspecified or ip.is_multicast:
        kinds.append(RESERVED)
    elif not ip.is_global:
        kinds.append(PRIVATE)  # fc00::/7 and other non-public ranges
    embedded = [ip.sixtofour] + [ipaddress.IPv4Address(ip.packed[-4:]) for n in _EMBEDS_V4 if ip in n]
    kinds += [_kind_v4(v4) for v4 in embedded if v4 is not None]
    for kind in (LOOPBACK, LINK_LOCAL, RESERVED, PRIVATE):
        if kind in kinds:
            return kind
    return None


def parse_host(host: str) -> tuple[str, Address | None]:
    """(normalised name, IP literal or None); every IPv4 spelling inet_aton accepts counts as a literal."""
    host = host.strip().lower().rstrip(".")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = normalise_ip(ipaddress.ip_address(host[1:-1] if bracketed else host))
        return str(ip), ip
    except ValueError:
        if bracketed:
            raise BadRequest(f"bad IPv6 address {host[:80]!r}") from None
    if _NUMERIC_V4.fullmatch(host):
        try:
            ip = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            raise BadRequest(f"bad address {host!r}") from None
        return str(ip), ip
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise BadRequest(f"bad host name {host[:80]!r}")
    return host, None


def split_authority(text: str, default_port: int | None = None) -> tuple[str, int]:
    """host:port, [v6]:port, or a bare host when a default port is given."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        host = f"[{host}]"  # parse_host accepts brackets around IPv6 literals only
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else "!")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not port_text and default_port is not None:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadRequest(f"bad port in {text[:80]!r}")
    return host, int(port_text)


@dataclass(frozen=True)
class _Entry:
    name: str
    ip: Address | None
    ports: frozenset[int]


def _parse_entry(text: str) -> _Entry:
    if "://" in text:
        url = urlsplit(text)
        default = {"http": 80, "https": 443}.get(url.scheme.lower())
        if default is None or not url.hostname:
            raise ValueError(f"egress allow entry {text!r}: need an http(s) URL")
        name, ip = parse_host(url.hostname)
        return _Entry(name, ip, frozenset({url.port or default}))
    if text.count(":") > 1 and not text.startswith("["):
        text = f"[{text}]"  # a bare IPv6 address
    host, port = split_authority(text, default_port=0)
    name, ip = parse_host(host)
    return _Entry(name, ip, frozenset({port} if port else {80, 443}))


@dataclass(frozen=True)
class EgressPolicy:
    """Where one run may connect. `allow` entries: host, host:port, [v6]:port, or an http(s) URL."""

    mode: str
    allow: tuple[str, ...] = ()
    _entries: tuple[_Entry, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"egress mode must be one of {MODES}, not {self.mode!r}")
        try:
            entries = tuple(_parse_entry(entry) for entry in self.allow)
        except BadRequest as exc:
            raise ValueError(f"egress allow list: {exc}") from None
        object.__setattr__(self, "_entries", entries)

    @classmethod
    def for_run(cls, mode: str, admin_allow: str, dtable_web_url: str | None,
                extra_urls: Iterable[str] = ()) -> EgressPolicy:
        """The admin's list (PYTHON_RUNNER_EGRESS_ALLOW) plus the run's own SeaTable server and file server."""
        entries = allow_entries(admin_allow)
        for url in [dtable_web_url or "", *extra_urls]:
            try:
                _parse_entry(url)
            except (ValueError, BadRequest):
                continue  # a run's bad URL only means nothing extra is allowed
            entries.append(url)
        return cls(mode, tuple(dict.fromkeys(entries)))

    def _match(self, name: str, literal: Address | None, port: int) -> _Entry | None:
        for entry in self._entries:
            same = entry.ip == literal if literal is not None else entry.ip is None and entry.name == name
            if same and port in entry.ports:
                return entry
        return None

    def lists(self, host: str, port: int) -> bool:
        """True when the destination is on this policy's list (the admin's, or the run's own server)."""
        name, literal = parse_host(host)
        return self._match(name, literal, port) is not None

    def check(self, host: str, port: int, resolver: Resolver) -> list[Address]:
        """The addresses to connect to, or Refused. Unlisted names are never even resolved in seatable mode."""
        name, literal = parse_host(host)
        entry = self._match(name, literal, port)
        if entry is None and self.mode == "seatable":
            raise Refused(NOT_ALLOWED)
        addresses = [literal] if literal is not None else _resolve(resolver, name, port)
        for ip in addresses:
            kind = address_kind(ip)
            if kind is None or (entry is not None and (
                    entry.ip == ip or kind == PRIVATE or (entry.name == "localhost" and kind == LOOPBACK))):
                continue  # listed names may live on the private network; special ranges only as listed literals
            raise Refused(kind, "" if literal is not None else str(ip))
        return addresses


def allow_entries(text: str) -> list[str]:
    """PYTHON_RUNNER_EGRESS_ALLOW's entries: separated by commas or white space."""
    return [entry for entry in re.split(r"[\s,]+", text) if entry]


def _resolve(resolver: Resolver, name: str, port: int) -> list[Address]:
    try:
        infos = resolver(name, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise Refused(UNRESOLVED) from None
    addresses = list(dict.fromkeys(normalise_ip(ipaddress.ip_address(str(i[4][0]).split("%")[0])) for i in infos))
    if not addresses:
        raise Refused(UNRESOLVED)
    return addresses
