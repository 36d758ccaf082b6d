"""Polling browsers for the pipeline bench: many keep-alive connections driven by one thread.

SeaTable's page asks for a run's state about once a second while a user waits on it. The browsers that do so
run on the users' machines, not on the pipeline's host; the bench has to simulate them on that host, so their
own CPU is kept as small as a client can make it (requests written by hand, raw sockets, one selector loop) and what
is left of their load is the scheduler API's. A thread per browser with `requests` cost more CPU per GET than
the scheduler's answer did, and counted against the runs.
"""

from __future__ import annotations

import random
import selectors
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

RECV_BYTES = 65536
DRAIN_SECONDS = 5.0  # at most this long for the answers in flight when the browsers stop


@dataclass
class Browser:
    due: float
    sock: socket.socket | None = None
    sent: float = 0.0
    buffer: bytearray = field(default_factory=bytearray)


def _complete(buffer: bytearray) -> tuple[bool, bool]:
    """Whether a whole response (the scheduler always sends Content-Length) is in `buffer`, and whether the server
    closes the connection after it."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return False, False
    headers = {}
    for line in bytes(buffer[:head_end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    length = int(headers.get(b"content-length", b"0"))
    return len(buffer) >= head_end + 4 + length, headers.get(b"connection") == b"close"


def poll(url: str, token_header: str, bases: list[str], first: int, n: int, browsers: int, interval: float,
         stop: Any) -> list[float]:
    """`browsers` pollers, each asking for a random run of ids [first, first + n) every `interval` s until
    `stop` is set; the latency of every answered GET in ms (the GETs in flight at the stop are waited for)."""
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    host = parts.netloc.encode()
    selector = selectors.DefaultSelector()
    now = time.monotonic()
    pollers = [Browser(due=now + random.uniform(0, interval)) for _ in range(browsers)]
    latencies: list[float] = []

    def request() -> bytes:
        query = urlencode({"dtable_uuid": random.choice(bases), "script_name": "hi.py"})
        return (f"GET {parts.path}/run-script/{random.randrange(first, first + n)}/?{query} HTTP/1.1\r\n"
                f"Authorization: {token_header}\r\n").encode() + b"Host: " + host + b"\r\n\r\n"

    def drop(browser: Browser) -> None:
        if browser.sock is not None:
            selector.unregister(browser.sock)
            browser.sock.close()
            browser.sock = None

    drain_until = 0.0  # once stopped, the answers already asked for are still read (and counted), this long
    while True:
        now = time.monotonic()
        if stop.is_set() and not drain_until:
            drain_until = now + DRAIN_SECONDS
        if drain_until and (now >= drain_until or not any(b.sent for b in pollers)):
            break
        for browser in pollers:
            if drain_until or browser.sent or browser.due > now:
                continue
            try:
                if browser.sock is None:
                    browser.sock = socket.create_connection(address, timeout=30)
                    selector.register(browser.sock, selectors.EVENT_READ, browser)
                browser.sent = time.perf_counter()
                browser.sock.sendall(request())
            except OSError:
                drop(browser)
                browser.sent, browser.due = 0.0, now + interval
        waiting = [b.due for b in pollers if not b.sent and not drain_until]
        timeout = max(0.0, min(waiting) - time.monotonic()) if waiting else 0.1
        for key, _ in selector.select(min(timeout, 0.1)):
            browser = key.data
            try:
                chunk = browser.sock.recv(RECV_BYTES)
            except OSError:
                chunk = b""
            if chunk:
                browser.buffer += chunk
                complete, closing = _complete(browser.buffer)
                if not complete:
                    continue
                latencies.append((time.perf_counter() - browser.sent) * 1000)
                if closing:
                    drop(browser)
            else:  # closed by the server (keep-alive timeout): a new connection at the next poll
                drop(browser)
            browser.buffer.clear()
            browser.sent, browser.due = 0.0, time.monotonic() + interval
    for browser in pollers:
        drop(browser)
    return latencies


def in_process(url: str, headers: dict[str, str], bases: list[str], first: int, n: int, browsers: int,
               interval: float, stop: Any, results: Any, ready: Any) -> None:
    """`poll` as a process's target (spawned: it imports only this module, then sets `ready`); the latencies go
    to `results`."""
    ready.set()
    results.put(poll(url, headers["Authorization"], bases, first, n, browsers, interval, stop))
