"""Host-side egress proxy: a runner's only way out, allow-listed per run.

A runner has no network interface but loopback; its one exit is a Unix socket in a per-run
directory that the driver bind-mounts at /run/egress. Every destination is checked here, not in
the runner (sandbox.egress_policy decides; this module connects to exactly the addresses it
checked). HTTPS passes through CONNECT as opaque bytes (no TLS interception); plain HTTP is
forwarded one request per connection, rewritten to origin form with Connection: close.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.egress_http import PIPE_CHUNK, Mover, ProxyRequest, answer, parse_request, read_head, rewrite_response
from sandbox.egress_policy import (  # the reason texts users see live there, at the top
    FAILED_LINE,
    NOT_ARMED,
    REFUSED_LINE,
    TOO_MANY,
    UNREACHABLE,
    Address,
    BadRequest,
    EgressPolicy,
    Refused,
    Resolver,
)

__all__ = ["EgressPolicy", "EgressProxy", "ProxyRequest", "RunEgressReport", "connect_address", "parse_request"]

SOCKET_NAME = "proxy.sock"
MAX_REPORT_LINES = 20

Connector = Callable[[Address, int, float], socket.socket]
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def connect_address(ip: Address, port: int, timeout: float) -> socket.socket:
    """Connect to exactly this address (the one the policy checked)."""
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((str(ip), port))
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class RunEgressReport:
    refused: list[str]
    allowed: int
    bytes_up: int
    bytes_down: int
    failed: list[str] = field(default_factory=list)
    refused_total: int = 0


class Unreachable(Exception):
    """An allowed destination that did not answer (answered 502, reported as failed)."""


def _shutdown(sock: socket.socket | None, how: int = socket.SHUT_RDWR) -> None:
    if sock is not None:
        try:
            sock.shutdown(how)
        except OSError:
            pass


class _Conn:
    """One accepted connection; only its own thread writes the byte counters."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self.up = 0
        self.down = 0


class _Run:
    def __init__(self, key: str, listener: socket.socket) -> None:
        self.key = key
        self.listener = listener
        self.policy: EgressPolicy | None = None
        self.lock = threading.Lock()
        self.conns: set[_Conn] = set()
        self.closed = False
        self.acceptor: threading.Thread | None = None
        self.allowed = self.bytes_up = self.bytes_down = 0
        self.refused: dict[str, int] = {}
        self.failed: dict[str, int] = {}

    def report(self) -> RunEgressReport:
        with self.lock:
            return RunEgressReport(
                refused=_lines(self.refused), allowed=self.allowed,
                bytes_up=self.bytes_up + sum(c.up for c in self.conns),
                bytes_down=self.bytes_down + sum(c.down for c in self.conns),
                failed=_lines(self.failed), refused_total=sum(self.refused.values()))


def _lines(table: dict[str, int]) -> list[str]:
    lines = [line if n == 1 else f"{line} ({n} times)" for line, n in table.items()]
    if len(lines) > MAX_REPORT_LINES:
        lines = [*lines[:MAX_REPORT_LINES], f"egress: {len(lines) - MAX_REPORT_LINES} more destinations not shown"]
    return lines


class EgressProxy:
    """One per sandbox service: a listening Unix socket per run, a thread per connection."""

    def __init__(self, base_dir: Path, *, resolver: Resolver = socket.getaddrinfo,
                 connector: Connector = connect_address, idle_timeout: float = 300.0,
                 head_timeout: float = 30.0, connect_timeout: float = 10.0, max_connections: int = 32,
                 clear: bool = False) -> None:
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if clear:  # sockets of runs this service held before a restart: their runners are gone
            for leftover in os.listdir(self.base_dir):
                self._remove(leftover)
        self._resolver = resolver
        self._connector = connector
        self.idle_timeout = idle_timeout
        self.head_timeout = head_timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._totals = dict.fromkeys(("allowed", "refused", "failed", "bytes_up", "bytes_down"), 0)

    def open(self, key: str) -> Path:
        """Create <base>/<key>/proxy.sock (dir 0755, socket 0666); the driver bind-mounts the directory."""
        if not _KEY.fullmatch(key):
            raise ValueError(f"bad egress key {key!r}")
        with self._lock:
            if key in self._runs:
                raise ValueError(f"egress for {key!r} is already open")
            self._remove(key)  # a leftover of a crashed service
            path = self.base_dir / key
            os.mkdir(path, 0o755)
            os.chmod(path, 0o755)  # noqa: S103 - whatever the umask: the runner must traverse it, never write it
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                listener.bind(str(path / SOCKET_NAME))
                os.chmod(path / SOCKET_NAME, 0o666)  # noqa: S103 - the runner's uid is another host uid
                listener.listen(64)
            except BaseException:
                listener.close()
                self._remove(key)
                raise
            run = self._runs[key] = _Run(key, listener)
        run.acceptor = threading.Thread(target=self._accept, args=(run,), daemon=True, name=f"egress-{key}")
        run.acceptor.start()
        return path

    def arm(self, key: str, policy: EgressPolicy) -> None:
        """Give a (possibly warm) runner its job's policy; once only."""
        with self._lock:
            run = self._runs[key]
        with run.lock:
            if run.policy is not None:
                raise ValueError(f"egress for {key!r} is already armed")
            run.policy = policy

    def close(self, key: str) -> RunEgressReport:
        """Stop listening, cut the run's connections, delete its directory; the run's report."""
        with self._lock:
            run = self._runs.pop(key)
        with run.lock:
            run.closed = True
            conns = list(run.conns)
        _shutdown(run.listener)  # wakes the acceptor
        for conn in conns:
            _shutdown(conn.client)
            _shutdown(conn.upstream)
        deadline = time.monotonic() + 2.0
        for thread in [run.acceptor, *(c.thread for c in conns)]:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        run.listener.close()
        self._remove(key)
        return run.report()

    def shutdown(self) -> None:
        with self._lock:
            keys = list(self._runs)
        for key in keys:
            self.close(key)

    def stats(self) -> dict[str, int]:
        """Service-wide counters for /health (bytes of finished connections)."""
        with self._lock:
            runs = list(self._runs.values())
            stats = dict(self._totals)
        stats["runs"] = len(runs)
        stats["armed"] = sum(run.policy is not None for run in runs)
        stats["connections"] = sum(len(run.conns) for run in runs)
        return stats

    def _remove(self, key: str) -> None:
        """Delete <base>/<key> through a directory fd, never following a link inside it or in its place."""
        base = os.open(self.base_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                mode = os.lstat(key, dir_fd=base).st_mode
            except FileNotFoundError:
                return
            if stat.S_ISDIR(mode):
                shutil.rmtree(key, dir_fd=base)  # fd-based on Linux: avoids_symlink_attacks
            else:
                os.unlink(key, dir_fd=base)
        finally:
            os.close(base)

    def _accept(self, run: _Run) -> None:
        while True:
            try:
                client, _ = run.listener.accept()
            except OSError:
                if run.closed:
                    return
                time.sleep(0.05)  # out of descriptors: back off rather than spin
                continue
            conn = _Conn(client)
            try:  # fewer wake-ups on the download side; capped by net.core.wmem_max, so best effort
                client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PIPE_CHUNK)
            except OSError:
                pass
            with run.lock:
                if run.closed:
                    client.close()
                    return
                full = len(run.conns) >= self.max_connections
                if not full:
                    run.conns.add(conn)
            if full:
                self._note(run, "refused", REFUSED_LINE.format(target="new connection", reason=TOO_MANY))
                answer(client, 503, "Service Unavailable", TOO_MANY, TOO_MANY)
                client.close()
                continue
            conn.thread = threading.Thread(target=self._serve, args=(run, conn), daemon=True,
                                           name=f"egress-{run.key}-conn")
            conn.thread.start()

    def _note(self, run: _Run, kind: str, line: str = "") -> None:
        with run.lock:
            if kind == "allowed":
                run.allowed += 1
            else:
                table = run.refused if kind == "refused" else run.failed
                table[line] = table.get(line, 0) + 1
        with self._lock:
            self._totals[kind] += 1

    def _serve(self, run: _Run, conn: _Conn) -> None:
        client, target = conn.client, "?"
        try:
            head, rest = read_head(client, time.monotonic() + self.head_timeout)
            request = parse_request(head)
            target = request.target
            if run.policy is None:
                raise Refused(NOT_ARMED)
            addresses = run.policy.check(request.host, request.port, self._resolver)
            conn.upstream = self._connect(addresses, request.port)
            if run.closed:
                return
            self._note(run, "allowed")
            first = rest if request.connect else request.head + rest
            if request.connect:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            client.settimeout(self.idle_timeout)
            conn.upstream.settimeout(self.idle_timeout)
            if first:
                conn.upstream.sendall(first)
                conn.up += len(first)
            self._splice(conn, conn.upstream, rewrite=not request.connect)
        except Refused as exc:
            reason = f"{exc.reason} {exc.detail}".strip()
            line = REFUSED_LINE.format(target=target, reason=reason)
            self._note(run, "refused", line)
            answer(client, 403, "Forbidden", line, exc.reason)
        except Unreachable as exc:
            line = FAILED_LINE.format(target=target, reason=f"{UNREACHABLE}: {exc}")
            self._note(run, "failed", line)
            answer(client, 502, "Bad Gateway", line)
        except BadRequest as exc:
            answer(client, 400, "Bad Request", f"egress: bad proxy request: {exc}")
        except (OSError, ValueError):
            pass  # a peer went away mid-stream
        finally:
            for sock in (conn.upstream, client):
                if sock is not None:
                    sock.close()
            with run.lock:
                run.conns.discard(conn)
                run.bytes_up += conn.up
                run.bytes_down += conn.down
            with self._lock:
                self._totals["bytes_up"] += conn.up
                self._totals["bytes_down"] += conn.down

    def _connect(self, addresses: list[Address], port: int) -> socket.socket:
        error = "no address"
        for ip in addresses:
            try:
                return self._connector(ip, port, self.connect_timeout)
            except OSError as exc:
                error = exc.strerror or type(exc).__name__
        raise Unreachable(error)

    def _splice(self, conn: _Conn, upstream: socket.socket, rewrite: bool) -> None:
        """Relay both ways until the upstream ends or nothing moves for idle_timeout."""
        client = conn.client
        poller = select.poll()
        poller.register(client, select.POLLIN)
        poller.register(upstream, select.POLLIN)
        client_fd = client.fileno()
        head: bytearray | None = bytearray() if rewrite else None
        mover = Mover(self.idle_timeout)
        try:
            while events := poller.poll(self.idle_timeout * 1000):
                for fd, _ in events:
                    if fd == client_fd:
                        n = mover.move(client, upstream)
                        if n == 0:
                            poller.unregister(client_fd)
                            _shutdown(upstream, socket.SHUT_WR)
                        conn.up += n or 0
                        continue
                    if head is not None:  # the response head is rewritten, the body only moved
                        data = upstream.recv(65536)
                        head += data
                        rewritten = rewrite_response(head) if data else bytes(head)
                        if rewritten is not None:
                            client.sendall(rewritten)
                            conn.down += len(rewritten)
                            head = None
                        if not data:
                            return
                        continue
                    n = mover.move(upstream, client)
                    if n == 0:
                        return
                    conn.down += n or 0
        finally:
            mover.close()
