"""The egress proxy's wire level: proxy requests, response heads, and moving bytes fast.

Kept apart from the proxy's bookkeeping (sandbox.egress) and its policy (sandbox.egress_policy).
Bytes move with splice(2) through a pipe, so a download through the proxy is never copied into
this process: the proxied path has to keep up with at least half of a direct one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import select
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from sandbox.egress_policy import BadRequest, split_authority

MAX_HEAD = 32 * 1024
BUFFER = 256 * 1024
PIPE_CHUNK = 1024 * 1024  # pipe size and most moved per splice; fewer, larger moves
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True)
class ProxyRequest:
    connect: bool
    host: str
    port: int
    head: bytes  # what goes upstream (plain HTTP only)

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host[:100]}:{self.port}"


_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "upgrade", "host"})


def parse_request(head: bytes) -> ProxyRequest:
    """CONNECT host:port, or an absolute http:// request rewritten to origin form with Connection: close."""
    lines = head.decode("latin-1").split("\r\n")[:-2]
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest("bad request line")
    method, target, version = parts
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise BadRequest("bad header line")
        headers.append((name, value.strip()))
    if method == "CONNECT":
        return ProxyRequest(True, *split_authority(target), b"")
    url = urlsplit(target)
    if url.scheme.lower() != "http" or not url.netloc:
        raise BadRequest("use CONNECT, or an absolute http:// URL")
    authority = url.netloc.rpartition("@")[2]
    host, port = split_authority(authority, default_port=80)
    listed = {t.strip().lower() for n, v in headers if n.lower() == "connection" for t in v.split(",")}
    drop = _HOP_BY_HOP | listed
    kept = [f"{n}: {v}" for n, v in headers if n.lower() not in drop and not n.lower().startswith("proxy-")]
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    out = [f"{method} {path} {version}", f"Host: {authority}", *kept, "Connection: close", "", ""]
    return ProxyRequest(False, host, port, "\r\n".join(out).encode("latin-1"))


def rewrite_response(head: bytearray) -> bytes | None:
    """The response head with Connection: close, so no client reuses a connection this proxy ends."""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return None if len(head) <= MAX_HEAD else bytes(head)
    lines = bytes(head[:end]).split(b"\r\n")
    kept = [ln for ln in lines[1:] if ln.split(b":", 1)[0].strip().lower() not in (b"connection", b"keep-alive")]
    return b"\r\n".join([lines[0], *kept, b"Connection: close", b"", b""]) + bytes(head[end + 4:])


def read_head(sock: socket.socket, deadline: float) -> tuple[bytes, bytes]:
    data = bytearray()
    while (end := data.find(b"\r\n\r\n")) < 0:
        remaining = deadline - time.monotonic()
        if len(data) > MAX_HEAD or remaining <= 0:
            raise BadRequest("request head too large or too slow")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            raise ConnectionError("closed before a complete request")
        data += chunk
    if end > MAX_HEAD:
        raise BadRequest("request head too large")
    return bytes(data[:end + 4]), bytes(data[end + 4:])


def answer(sock: socket.socket, status: int, phrase: str, body: str, reason: str = "") -> None:
    """A short text answer; then drain briefly so closing does not reset it away."""
    extra = f"X-Egress-Refused: {reason}\r\n" if reason else ""
    payload = (body + "\n").encode()
    head = (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n{extra}\r\n")
    try:
        sock.settimeout(2.0)
        sock.sendall(head.encode() + payload)
        sock.shutdown(socket.SHUT_WR)
        for _ in range(16):
            if not sock.recv(65536):
                break
    except OSError:
        pass


class Mover:
    """Moves what is readable from one socket to another: splice(2) through a pipe, so the bytes are
    never copied into this process (the proxy must keep up with a direct download), recv/send where
    splice is not supported."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.pipe: tuple[int, int] | None = os.pipe2(os.O_CLOEXEC)
        try:  # fewer, larger moves; refused once the user's pipe budget is spent, which only costs speed
            fcntl.fcntl(self.pipe[1], fcntl.F_SETPIPE_SZ, PIPE_CHUNK)
        except OSError:
            pass
        self.buf = bytearray(0)

    def close(self) -> None:
        if self.pipe is not None:
            os.close(self.pipe[0])
            os.close(self.pipe[1])
            self.pipe = None

    def move(self, src: socket.socket, dst: socket.socket) -> int | None:
        """Bytes moved; 0 at end of stream; None when there was nothing to read after all."""
        if self.pipe is not None:
            try:
                n = os.splice(src.fileno(), self.pipe[1], PIPE_CHUNK, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                self.close()  # nothing moved yet: carry on with recv/send
            else:
                left = n
                while left:
                    try:
                        left -= os.splice(self.pipe[0], dst.fileno(), left, flags=_SPLICE_FLAGS)
                    except BlockingIOError:
                        wait_writable(dst, self.timeout)
                return n
        if not self.buf:
            self.buf = bytearray(BUFFER)
        try:
            n = src.recv_into(self.buf)
        except BlockingIOError:
            return None
        dst.sendall(memoryview(self.buf)[:n])
        return n


def wait_writable(sock: socket.socket, timeout: float) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    if not poller.poll(timeout * 1000):
        raise TimeoutError("peer stopped reading")
