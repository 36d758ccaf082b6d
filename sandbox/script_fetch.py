"""The sandbox's one request on a run's behalf, the script download, held to the runners' egress rules.

The dispatcher's task/file answer names the URL, so whoever controls that answer (or a redirect from it) could
make the sandbox fetch what no runner may reach and put the page into the run's output (issue 20). Every
connection of the download, redirects included, goes through `_Guard.connect`: the name is resolved once,
every address is checked by the same EgressPolicy the network modes use (loopback, link-local, reserved,
private unless listed), this host's own addresses are refused unless the destination is listed, and the socket
is connected to exactly a checked address (no second lookup, no DNS rebinding). TLS still verifies the name.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from sandbox.egress_policy import Address, BadRequest, EgressPolicy, Refused, normalise_ip

THIS_HOST = "an address of this host"
MAX_REDIRECTS = 5


class FetchRefused(Exception):
    """The download would connect where runners may not; str() says where and why (no page content)."""


@dataclass(frozen=True)
class _Guard:
    policy: EgressPolicy
    host_addresses: Callable[[], tuple[Address, ...]]
    resolver: Callable[..., list[tuple[Any, ...]]] = socket.getaddrinfo

    def connect(self, host: str, port: int, timeout: float | None) -> socket.socket:
        target = f"{host}:{port}"
        try:
            addresses = self.policy.check(host, port, self.resolver)
            if not self.policy.lists(host, port):
                mine = {normalise_ip(ip) for ip in self.host_addresses()}
                if any(ip in mine for ip in addresses):
                    raise Refused(THIS_HOST)
        except Refused as refused:
            raise FetchRefused(f"{target}: {refused.reason}") from None
        except BadRequest as bad:
            raise FetchRefused(f"{target}: {bad}") from None
        error: OSError | None = None
        for ip in addresses:
            try:
                return socket.create_connection((str(ip), port), timeout)
            except OSError as exc:
                error = exc
        assert error is not None
        raise error


def _session(guard: _Guard) -> requests.Session:
    def new_conn(conn: HTTPConnection) -> socket.socket:
        timeout = conn.timeout if isinstance(conn.timeout, (int, float)) else None
        return guard.connect(conn.host, conn.port, timeout)

    class GuardedHTTP(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return new_conn(self)

    class GuardedHTTPS(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return new_conn(self)

    class HTTPPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTP

    class HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPS

    adapter = HTTPAdapter(max_retries=0)
    adapter.poolmanager.pool_classes_by_scheme = {"http": HTTPPool, "https": HTTPSPool}
    session = requests.Session()
    session.trust_env = False  # a proxy from the environment would connect for us, past the guard
    session.max_redirects = MAX_REDIRECTS
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def fetch(url: str, policy: EgressPolicy, host_addresses: Callable[[], tuple[Address, ...]],
          timeout: float, max_bytes: int) -> tuple[int, bytes]:
    """(status, at most max_bytes + 1 bytes of the body); FetchRefused or requests' errors otherwise."""
    with _session(_Guard(policy, host_addresses)) as session:
        response = session.get(url, timeout=timeout, stream=True)
        try:
            return response.status_code, bytes(response.raw.read(max_bytes + 1, decode_content=True))
        finally:
            response.close()
