"""A tiny stand-in for the scheduler's /run-script/ API, to test the button (which is only a client)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "fake-scheduler-token"


class FakeScheduler:
    """Accepts runs (or refuses them) and walks each through `states`, one state per status request."""

    def __init__(
        self,
        states: tuple[str, ...] = ("pending", "pending", "running", "running", "finished"),
        refuse: tuple[int, str] | None = None,
    ) -> None:
        self.states = states
        self.refuse = refuse
        self.submissions: list[dict[str, Any]] = []
        self.polls: list[dict[str, Any]] = []
        self.auth_headers: list[str | None] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeScheduler:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any) -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                fake.auth_headers.append(self.headers.get("Authorization"))
                if self.headers.get("Authorization") != f"Token {TOKEN}":
                    return self._reply(403, "Forbidden: the auth token is not correct.")
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                if fake.refuse is not None:
                    return self._reply(*fake.refuse)
                fake.submissions.append(body)
                return self._reply(200, {"script_id": len(fake.submissions)})

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                script_id = int(parts.path.strip("/").split("/")[1])
                query = {key: values[0] for key, values in parse_qs(parts.query).items()}
                fake.polls.append({"script_id": script_id, **query})
                if script_id > len(fake.submissions):
                    return self._reply(404, "Not found")
                seen = sum(1 for poll in fake.polls if poll["script_id"] == script_id)
                state = fake.states[min(seen, len(fake.states)) - 1]
                done = state == "finished"
                script = {
                    "id": script_id,
                    "state": state,
                    "success": True if done else None,
                    "output": f"run {script_id}\n" if done else None,
                }
                return self._reply(200, {"script": script})

        return Handler
