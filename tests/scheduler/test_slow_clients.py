"""The scheduler API survives slow and hostile clients (issue 13, item 4): see tests/isolation/test_slow_clients.py.

200 connections send request heads one byte a second, half of them with the scheduler's token; while
they are verifiably held open, /ping/ and an authenticated POST /run-script/ must still be answered.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import requests

from tests.scheduler.conftest import AUTH, BASE, TOKEN, RunningServer, env_for
from tests.support.slow_clients import heads, slow_clients

SLOW = 200


def test_ping_and_submit_answer_while_200_slow_clients_hold_connections(
        tmp_path: Path, serve: Callable[[dict[str, str]], RunningServer]) -> None:
    server = serve(env_for(tmp_path / "scheduler.sqlite3"))
    port = int(server.url.rsplit(":", 1)[1])
    payloads = heads("/run-script/", SLOW // 2, token=TOKEN, method="POST") + heads("/ping/", SLOW // 2)
    with slow_clients(port, payloads) as slow:
        slow.wait_sent(each=2)
        assert slow.open() == SLOW  # all of them held, none answered or dropped
        started = time.monotonic()
        ping = requests.get(server.url + "/ping/", timeout=10)
        ping_seconds = time.monotonic() - started
        body = {"dtable_uuid": BASE, "script_name": "a.py", "owner": "o@x"}
        created = requests.post(server.url + "/run-script/", json=body, headers=AUTH, timeout=10)
        submit_seconds = time.monotonic() - started - ping_seconds
        assert (ping.status_code, ping.text) == (200, "Pong")
        assert created.status_code == 200 and created.json()["script_id"] > 0, created.text
        print(f"while {slow.open()} slow clients held: ping {ping_seconds * 1000:.0f} ms, "
              f"submit {submit_seconds * 1000:.0f} ms")


def read_responses(sock: socket.socket, count: int) -> list[bytes]:
    """`count` whole HTTP responses (Content-Length bodies) from one connection."""
    data = b""
    responses: list[bytes] = []
    while len(responses) < count:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(responses)} responses: {data!r}"
        data += chunk
        while b"\r\n\r\n" in data:
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            if len(rest) < length:
                break
            responses.append(head + b"\r\n\r\n" + rest[:length])
            data = rest[length:]
    return responses


def test_kept_alive_and_pipelined_requests_are_all_answered(
        tmp_path: Path, serve: Callable[[dict[str, str]], RunningServer]) -> None:
    """The event loop reads the head of every request on a connection, not just the first one's."""
    server = serve(env_for(tmp_path / "scheduler.sqlite3"))
    port = int(server.url.rsplit(":", 1)[1])
    ping = b"GET /ping/ HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(ping)
        [first] = read_responses(sock, 1)
        time.sleep(0.3)  # back to the event loop as a kept-alive connection
        for byte in ping:  # the next head arrives slowly, byte by byte
            sock.sendall(bytes([byte]))
        [second] = read_responses(sock, 1)
        sock.sendall(ping * 3)  # pipelined: three heads in one packet
        rest = read_responses(sock, 3)
    for response in [first, second, *rest]:
        assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(b"Pong"), response
