"""Serving the stub: a threaded stdlib WSGI server (one process, so all requests share the state)."""

from __future__ import annotations

import logging
import socketserver
import ssl
import threading
from types import TracebackType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .app import StubApp, create_app
from .clock import Clock
from .config import StubConfig
from .state import SeaTable

log = logging.getLogger("seatable_stub")


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server, a thread per request: the scheduler, sandboxes and tests call at the same time."""

    daemon_threads = True
    allow_reuse_address = True


class LoggingHandler(WSGIRequestHandler):
    """Request lines go to the logger (debug) instead of stderr, so test output stays readable."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class TLSHandler(LoggingHandler):
    """Tells the app its requests came over HTTPS, so the URLs it hands out say https://."""

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        environ["HTTPS"] = "on"
        return environ


def make_stub_server(app: StubApp, host: str = "127.0.0.1", port: int = 0,
                     tls: tuple[str, str] | None = None) -> ThreadingWSGIServer:
    """A bound (not yet serving) server for `app`; port 0 picks a free one; tls = (certfile, keyfile)."""
    handler = TLSHandler if tls else LoggingHandler
    server = make_server(host, port, app, server_class=ThreadingWSGIServer, handler_class=handler)
    assert isinstance(server, ThreadingWSGIServer)
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


class StubServer:
    """The stub on a free port in a background thread: `with StubServer(secret) as stub: stub.url`.

    `stub.seatable` is the live state (same object the requests change), `stub.clock` its clock.
    """

    def __init__(
        self,
        secret: str = "seatable-stub-shared-secret-0123456789",  # noqa: S107 - a test fixture's value
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        scheduler_url: str | None = None,
        scheduler_token: str | None = None,
        poll_interval: float = 2.0,
        config: StubConfig | None = None,
        clock: Clock | None = None,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.config = config or StubConfig(secret=secret, scheduler_url=scheduler_url,
                                           scheduler_token=scheduler_token, poll_interval=poll_interval)
        self.seatable = SeaTable(self.config, clock)
        self.app = create_app(self.config, self.seatable)
        self._host = host
        self._port = port
        self._tls = tls
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def clock(self) -> Clock:
        """The stub's clock (advance it to expire tokens)."""
        return self.seatable.clock

    @property
    def port(self) -> int:
        """The bound port (after start)."""
        if self._server is None:
            raise RuntimeError("StubServer is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL like http://127.0.0.1:41234 (no trailing slash); loopback when bound to all interfaces."""
        host = self._host if self._host not in ("0.0.0.0", "", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self._tls else 'http'}://{host}:{self.port}"

    def start(self) -> StubServer:
        """Bind and serve in a daemon thread."""
        self._server = make_stub_server(self.app, self._host, self._port, self._tls)
        # A short poll interval keeps stop() quick; tests start and stop a stub per test.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="seatable-stub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
