"""Slow, hostile HTTP clients: many connections sending a request head one byte at a time, never finishing.

Used by the tests of both services and by bench/slow_clients.py. One thread drives every connection.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


def heads(path: str, count: int, token: str | None = None, method: str = "GET") -> list[bytes]:
    """Request heads that never end: after the real headers, padding headers without end."""
    auth = f"Authorization: Token {token}\r\n" if token else ""
    body = "Content-Type: application/json\r\nContent-Length: 64\r\n" if method == "POST" else ""
    head = f"{method} {path} HTTP/1.1\r\nHost: slow\r\n{auth}{body}".encode()
    padding = b"".join(f"X-Slow-{n}: y\r\n".encode() for n in range(10_000))
    return [head + padding for _ in range(count)]


class SlowClients:
    """Each connection sends the next byte of its head every `interval` seconds."""

    def __init__(self, port: int, payloads: list[bytes], interval: float = 1.0) -> None:
        self.port = port
        self.payloads = payloads
        self.interval = interval
        self.sockets: list[socket.socket] = []
        self.sent: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drip, name="slow-clients", daemon=True)

    def start(self) -> None:
        for _ in self.payloads:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            sock.setblocking(False)
            self.sockets.append(sock)
            self.sent.append(0)
        self._thread.start()

    def _drip(self) -> None:
        while not self._stop.is_set():
            for index, sock in enumerate(self.sockets):
                position = self.sent[index]
                try:
                    sock.send(self.payloads[index][position:position + 1])
                    self.sent[index] += 1
                except OSError:
                    continue  # closed by the server: open() counts it
            self._stop.wait(self.interval)

    def wait_sent(self, each: int, timeout: float = 30) -> None:
        """Until every connection has sent `each` bytes (so the server has seen all of them)."""
        deadline = time.monotonic() + timeout
        while min(self.sent) < each:
            assert time.monotonic() < deadline, f"slow clients stuck at {min(self.sent)} bytes"
            time.sleep(0.05)

    def open(self) -> int:
        """Connections the server has neither answered nor closed: still held, head unfinished."""
        poller = select.poll()
        for sock in self.sockets:
            poller.register(sock, select.POLLIN)
        answered = {fd for fd, _events in poller.poll(0)}
        return sum(sock.fileno() not in answered for sock in self.sockets)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for sock in self.sockets:
            sock.close()


@contextmanager
def slow_clients(port: int, payloads: list[bytes], interval: float = 1.0) -> Iterator[SlowClients]:
    clients = SlowClients(port, payloads, interval)
    clients.start()
    try:
        yield clients
    finally:
        clients.stop()
