"""HeadFirstWorker: gthread, except that the event loop, not a pool thread, reads each request head.

gunicorn's gthread worker hands a connection to a pool thread as soon as its first byte arrives;
the thread then blocks reading the rest of the head. A client that sends its head one byte a
second holds that thread for as long as it likes, so a few dozen such clients (no token needed)
stall every request behind them. Here the worker's event loop reads heads without blocking, gives
each at most HEAD_TIMEOUT seconds and MAX_HEAD bytes, and only a complete head reaches a thread,
with the bytes already read put back in front of gunicorn's own parser. When the worker is full,
the oldest unfinished head is dropped to make room, so slow heads never keep a new client out.

Written here rather than taken from a library: gevent would turn the sandbox's own threads (runs,
outbox, warm pool, egress proxy) into greenlets and give every greenlet its own database connection
in the scheduler; tornado's WSGI container buffers whole bodies of unauthenticated clients. This
changes only how a head arrives; requests, keep-alive and bodies stay gunicorn's. It subclasses
gthread's internals, so pyproject pins gunicorn's major version and tests/isolation exercises it.
"""

from __future__ import annotations

import errno
import json
import socket
import time
from collections import deque
from functools import partial
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

HEAD_TIMEOUT = 10.0  # seconds for a whole request head; an honest client needs milliseconds
MAX_HEAD = 64 * 1024  # bytes: far above any header the services accept
READ_SIZE = 16 * 1024
_END_OF_HEAD = (b"\r\n\r\n", b"\n\n")


class HeadFirstWorker(ThreadWorker):
    def init_process(self) -> None:
        self.heads: deque[Any] = deque()  # connections whose head is still arriving, oldest first
        super().init_process()

    def accept(self, listener: Any) -> None:
        if self.cfg.is_ssl:  # a TLS handshake is not ours to read
            super().accept(listener)
            return
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self._await_head(TConn(self.cfg, client, address, listener.getsockname()))  # non-blocking socket

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        """A kept-alive connection's next request begins: its head too is read here."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._await_head(conn)

    def handle(self, conn: Any) -> Any:
        head = getattr(conn, "head", None)
        if head:
            conn.head = None
            conn.sock.setblocking(True)
            conn.init()  # the parser (once per connection)
            conn.parser.unreader.unread(bytes(head))
        return super().handle(conn)

    def murder_pending(self) -> None:
        """Also end heads past their deadline (all of them when the worker stops): 408, then close."""
        super().murder_pending()
        now = time.monotonic()
        while self.heads and (self.heads[0].head_deadline <= now or not self.alive):
            self._refuse(self.heads[0], 408, f"request head not complete within {HEAD_TIMEOUT:g} s")

    def _await_head(self, conn: Any) -> None:
        conn.head = bytearray()
        conn.head_deadline = time.monotonic() + HEAD_TIMEOUT
        conn.sock.setblocking(False)
        self.heads.append(conn)
        self.poller.register(conn.sock, 1, partial(self._read_head, conn))  # 1: selectors.EVENT_READ
        if self.nr_conns >= self.worker_connections - 1 and len(self.heads) > 1:
            # Full: the oldest unfinished head makes room, before gunicorn stops accepting.
            self._refuse(self.heads[0], 408, "request head too slow; the server is busy")

    def _read_head(self, conn: Any, _sock: Any) -> None:
        try:
            chunk = conn.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._forget(conn)
            conn.close()
            return
        conn.head += chunk
        ends = [end for mark in _END_OF_HEAD if (end := conn.head.find(mark)) >= 0]
        if ends and min(ends) <= MAX_HEAD:  # what follows the head (a body) may be any size
            self._unregister(conn)
            conn.data_ready = True  # gthread must not wait for data again: it is here
            self.enqueue_req(conn)
        elif len(conn.head) > MAX_HEAD:
            self._refuse(conn, 431, f"request head over {MAX_HEAD} bytes")

    def _refuse(self, conn: Any, status: int, message: str) -> None:
        reason = {408: "Request Timeout", 431: "Request Header Fields Too Large"}[status]
        body = json.dumps({"error": message}).encode()
        response = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
        try:
            conn.sock.send(response)  # non-blocking, best effort: the client may be gone or not reading
            while conn.sock.recv(READ_SIZE):  # what it sent meanwhile: unread data would reset the answer
                pass
        except OSError:
            pass
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._forget(conn)
        conn.close()

    def _forget(self, conn: Any) -> None:
        self._unregister(conn)
        self.nr_conns -= 1

    def _unregister(self, conn: Any) -> None:
        try:
            self.heads.remove(conn)
        except ValueError:
            pass
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
