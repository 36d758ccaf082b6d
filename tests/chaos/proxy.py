"""A small HTTP/1.1 reverse proxy in front of a sandbox that resets hand-offs on demand.

The dispatcher talks to the sandbox through it. While `resetting` is on, every `every`-th
`POST /function/run-python` ends in a TCP reset, alternately *before* it is forwarded (the node never sees
it) and *after* the node answered (the node accepted it; the dispatcher never hears so). Like gunicorn, it
closes kept-alive connections after `keepalive` idle seconds, which is where a real reset comes from.
Everything else is passed through unchanged. Written by hand because a proxy that forwards byte streams
cannot tell one request from the next, and this one must pick individual requests.
"""

from __future__ import annotations

import http.client
import io
import socket
import socketserver
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field

HANDOFF = ("POST", "/function/run-python")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "te", "upgrade"}
MAX_BODY = 64 << 20


@dataclass
class ResetProxy:
    upstream_port: int
    port: int = 0
    keepalive: float = 2.0
    resetting: bool = False
    every: int = 2
    counts: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: socketserver.ThreadingTCPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _decide(self) -> str:
        """"pass", "before" or "after" for the next hand-off."""
        with self._lock:
            self.counts["handoffs"] += 1
            if not self.resetting or self.counts["handoffs"] % self.every:
                return "pass"
            mode = "before" if (self.counts["reset before"] <= self.counts["reset after"]) else "after"
            self.counts[f"reset {mode}"] += 1
            return mode

    def start(self) -> ResetProxy:
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.connection.settimeout(proxy.keepalive)
                while proxy._server is not None:
                    try:
                        request = _read_request(self.rfile)
                    except (TimeoutError, OSError, ValueError):
                        return  # idle past keepalive, or the client went away: close, as gunicorn does
                    if request is None:
                        return
                    method, path, headers, _body = request
                    mode = proxy._decide() if (method, path) == HANDOFF else "pass"
                    if mode == "before":
                        _reset(self.connection)
                        return
                    try:
                        status, reason, answer_headers, answer = _forward(proxy.upstream_port, request)
                    except OSError:
                        _reset(self.connection)  # the node is down: the client sees what it would see
                        return
                    if mode == "after":
                        _reset(self.connection)
                        return
                    lines = [f"HTTP/1.1 {status} {reason}"]
                    lines += [f"{k}: {v}" for k, v in answer_headers if k.lower() not in HOP_BY_HOP]
                    lines += [f"Content-Length: {len(answer)}", "", ""]
                    self.wfile.write("\r\n".join(lines).encode("latin-1") + answer)
                    if headers.get("connection", "").lower() == "close":
                        return

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        socketserver.ThreadingTCPServer.daemon_threads = True
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


Request = tuple[str, str, dict[str, str], bytes]


def _read_request(rfile: io.BufferedIOBase) -> Request | None:
    line = rfile.readline(65537)
    if not line:
        return None
    method, path, _version = line.decode("latin-1").split()
    headers: dict[str, str] = {}
    while True:
        header = rfile.readline(65537).decode("latin-1")
        if header in ("\r\n", "\n", ""):
            break
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if length > MAX_BODY:
        raise ValueError("body too large for the proxy")
    body = rfile.read(length) if length else b""
    return method, path, headers, body


def _forward(port: int, request: Request) -> tuple[int, str, list[tuple[str, str]], bytes]:
    method, path, headers, body = request
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        forwarded = {k: v for k, v in headers.items() if k not in HOP_BY_HOP}
        connection.request(method, path, body=body or None, headers=forwarded)
        response = connection.getresponse()
        return response.status, response.reason, response.getheaders(), response.read()
    finally:
        connection.close()


def _reset(connection: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST, as from a crashed or reset connection."""
    try:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()
    except OSError:
        pass
