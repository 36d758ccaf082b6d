"""The pipeline bench's polling browsers: keep-alive GETs at their interval, answered ones timed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from bench.browsers import _complete, poll


class _Scheduler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as gunicorn's
    seen: list[tuple[str, dict[str, list[str]], str | None, int]] = []
    close_every = 0  # answer every Nth request with Connection: close

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        _Scheduler.seen.append((parts.path, parse_qs(parts.query), self.headers.get("Authorization"),
                                self.client_address[1]))
        body = b'{"script": {"state": "pending"}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        closing = bool(self.close_every) and len(_Scheduler.seen) % self.close_every == 0
        if closing:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stand_in_api() -> Iterator[str]:
    _Scheduler.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scheduler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def run_for(url: str, seconds: float, browsers: int, interval: float) -> list[float]:
    stop = threading.Event()
    threading.Timer(seconds, stop.set).start()
    return poll(url, "Token t", ["base-a", "base-b"], 100, 10, browsers, interval, stop)


def test_each_browser_polls_at_its_interval_over_one_connection(stand_in_api: str) -> None:
    started = time.monotonic()
    latencies = run_for(stand_in_api, 1.0, browsers=5, interval=0.2)
    elapsed = time.monotonic() - started
    # Each browser: a first GET within one interval, then one per interval (plus its answer's time).
    assert 5 * (elapsed / 0.2 - 2) <= len(latencies) <= 5 * (elapsed / 0.2 + 1), (len(latencies), elapsed)
    assert len(latencies) == len(_Scheduler.seen)
    assert all(0 < ms < 1000 for ms in latencies)
    for path, query, auth, _port in _Scheduler.seen:
        assert auth == "Token t"
        run_id = int(path.removeprefix("/run-script/").removesuffix("/"))
        assert 100 <= run_id < 110 and path == f"/run-script/{run_id}/"
        assert query == {"dtable_uuid": [query["dtable_uuid"][0]], "script_name": ["hi.py"]}
        assert query["dtable_uuid"][0] in ("base-a", "base-b")
    assert len({port for *_, port in _Scheduler.seen}) == 5  # keep-alive: one connection per browser


def test_a_connection_the_server_closes_is_opened_again(stand_in_api: str) -> None:
    _Scheduler.close_every = 3
    try:
        latencies = run_for(stand_in_api, 1.0, browsers=2, interval=0.1)
    finally:
        _Scheduler.close_every = 0
    assert len(latencies) == len(_Scheduler.seen) >= 10
    assert len({port for *_, port in _Scheduler.seen}) > 2


def test_a_response_is_complete_only_with_its_whole_body() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"
    assert _complete(bytearray(head[:-2])) == (False, False)
    assert _complete(bytearray(head + b"abc")) == (False, False)
    assert _complete(bytearray(head + b"abcd")) == (True, False)
    assert _complete(bytearray(b"HTTP/1.1 204 No Content\r\n\r\n")) == (True, False)
    assert _complete(bytearray(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")) == (True, True)
