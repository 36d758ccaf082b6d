"""A stand-in sandbox node: a real HTTP server that accepts runs at once and counts them per script_id.

Speaks the sandbox API of the scheduler <-> sandbox contract (POST /function/run-python, idempotent by script_id;
GET /function/runs/{id} with running/reporting/done and tombstones; GET /ready; GET /health; same token rule;
answers to a challenge signed with its token, sandbox.node_proof) and, when given a scheduler URL, reports like the
real sandbox: a running callback, then the result, with the run's callback secret, retried until the scheduler
answers 2xx or refuses it for the run (403/409 with "refused"). Knobs for the failure tests: `busy` (429 to every
POST), `refuse` (400 to every POST, as the real sandbox refuses a body it cannot run), `unhealthy` (503 from /ready
and to every POST), `refuse_posts` (503 to POSTs while /ready still says 200), `without_ready` (no /ready: an older
node), `reset_next(mode, n)` (the next n POSTs end in a connection reset, "before" the run is accepted or "after"),
`reset_run(script_id, *modes)` (that run's next POSTs end in these resets, in order: a test that knows which
run meets which reset can expect each run's answers exactly, whatever order the POSTs come in),
`forget_all()` (the node loses its runs: 404 and no result, as after a wiped state directory), `report=False`
(accept and hold forever), `set_state()`. Run in-process (`with StubSandbox(...) as node:`) or as a process for
benchmarks: `python -m tests.support.stub_sandbox --port P --token T [--scheduler-url U --scheduler-token S]`.

Every body it sends or answers is checked against the contract (pipeline_contract.schemas) as it is built, and a
hand-off that breaks the contract gets the real sandbox's 400 with the field named.
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import signal
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import requests

from pipeline_contract import Message
from pipeline_contract.schemas import (
    ERROR,
    HANDOFF,
    HANDOFF_ACCEPTED,
    HANDOFF_DUPLICATE,
    HEALTH,
    NOT_HERE,
    NOT_READY,
    READY,
    RESULT_CALLBACK,
    RUN_STATE,
    RUN_STATES,
    RUNNING_CALLBACK,
)
from sandbox import node_proof

NODE = "stub"
_RUNS = re.compile(r"^/function/runs/([0-9]+)$")


@dataclass
class StubSandbox:
    token: str
    scheduler_url: str | None = None
    scheduler_token: str | None = None  # a fixed callback token instead of each run's secret (refusal tests)
    run_seconds: float = 0.0
    slots: int = 100_000
    report: bool = True
    running_callback: bool = True
    port: int = 0
    host: str = "127.0.0.1"
    busy: bool = False
    refuse: bool = False
    unhealthy: bool = False
    refuse_posts: bool = False
    without_ready: bool = False
    forget: bool = False
    accepted: Counter[int] = field(default_factory=Counter)
    posts: Counter[int] = field(default_factory=Counter)  # every POST that reached the handler, per script_id
    resets: list[str] = field(default_factory=list)  # modes of the next POSTs to end in a reset
    planned: dict[int, list[str]] = field(default_factory=dict)  # per script_id: modes of its next POSTs' resets
    answers: list[tuple[int, str]] = field(default_factory=list)  # (script_id, answer) of every POST, in order
    states: dict[int, str] = field(default_factory=dict)  # running, reporting, done (a tombstone)
    order: list[int] = field(default_factory=list)
    accepted_at: dict[int, float] = field(default_factory=dict)  # epoch of the first acceptance
    bodies: dict[int, dict[str, Any]] = field(default_factory=dict)
    held: set[int] = field(default_factory=set)
    refusals: list[tuple[int, str, str]] = field(default_factory=list)  # (script_id, path, why) refused for the run
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _jobs: queue.Queue[int | None] = field(default_factory=queue.Queue)
    _server: ThreadingHTTPServer | None = None
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- the API ----------------------------------------------------------------------------------------

    def submit(self, body: dict[str, Any]) -> tuple[int, str]:
        """202, 409 (with the state), 429 or 503, as the contract says."""
        script_id = int(body["script_id"])
        with self._lock:
            if script_id in self.states:
                return 409, self.states[script_id]
            if self.unhealthy or self.refuse_posts:
                return 503, ""
            if self.busy or len(self.held) >= self.slots:
                return 429, ""
            self.held.add(script_id)
            self.states[script_id] = "running"
            self.accepted[script_id] += 1
            self.accepted_at.setdefault(script_id, time.time())
            self.order.append(script_id)
            self.bodies[script_id] = body
        if self.report and self.scheduler_url:
            self._jobs.put(script_id)
        return 202, ""

    def status(self, script_id: int) -> str | None:
        with self._lock:
            return self.states.get(script_id)

    def set_state(self, script_id: int, state: str) -> None:
        """Put a run in a state by hand ("done": as if its result had been acknowledged)."""
        assert state in RUN_STATES, f"{state!r} is not a state of the contract"
        with self._lock:
            self.states[script_id] = state
            if state == "done":
                self.held.discard(script_id)

    def reset_next(self, mode: str, count: int = 1) -> None:
        """The next `count` POSTs end in a TCP reset: "before" accepting the run, or "after" accepting it."""
        assert mode in ("before", "after")
        with self._lock:
            self.resets.extend([mode] * count)

    def reset_run(self, script_id: int, *modes: str) -> None:
        """The next POSTs of this run end in TCP resets, one per mode in order; a run's plan goes before `resets`."""
        assert all(mode in ("before", "after") for mode in modes)
        with self._lock:
            self.planned.setdefault(script_id, []).extend(modes)

    def slot_counts(self) -> dict[str, int]:
        with self._lock:
            busy = len(self.held)
        free = 0 if self.busy else max(0, self.slots - busy)
        return {"total": self.slots, "busy": busy, "free": free}

    def ready(self) -> tuple[int, dict[str, Any], Message]:
        if self.unhealthy:
            return 503, {"error": "stub told to be unhealthy", "node": NODE}, NOT_READY
        return 200, {"node": NODE, "slots": self.slot_counts()}, READY

    def health(self) -> dict[str, Any]:
        """The /health report, in the real one's shape (the stub enforces nothing: rlimit, no network)."""
        return {"status": "unhealthy" if self.unhealthy else "ok",
                "problems": ["stub told to be unhealthy"] if self.unhealthy else [], "node": NODE,
                "slots": self.slot_counts(), "limits": {"memory": "rlimit", "pids": "rlimit", "cpu": "none",
                                                  "mechanism": "rlimit"},
                "isolation": {"mechanism": "rlimit", "runner_uids": {}}, "egress": {"mode": "none"}}

    def forget_all(self) -> None:
        """Lose every run held, as a node whose state directory was wiped: 404, and no result is ever sent."""
        with self._lock:
            self.forget = True
            self.held.clear()
            self.states.clear()

    def duplicates(self) -> dict[int, int]:
        with self._lock:
            return {sid: n for sid, n in self.accepted.items() if n > 1}

    # --- reporting like the real sandbox --------------------------------------------------------------

    def _deliver(self, path: str, body: dict[str, Any]) -> bool:
        with self._lock:
            secret = self.scheduler_token or str(self.bodies.get(body["script_id"], {}).get("callback_secret", ""))
        headers = {"Authorization": f"Token {secret}"}
        while self._server is not None:
            if self.forget:
                return False
            try:
                response = requests.post(f"{self.scheduler_url}{path}", json=body, headers=headers, timeout=10)
                if response.ok:
                    return True
                if response.status_code in (403, 409) and "refused" in response.text:
                    self.refusals.append((int(body["script_id"]), path, response.json()["refused"]))
                    return True  # the scheduler's final word, as the real outbox takes it
            except requests.RequestException:
                pass
            time.sleep(0.2)
        return False

    def _worker(self) -> None:
        while True:
            script_id = self._jobs.get()
            if script_id is None:
                return
            started = time.time()
            if self.running_callback:
                self._deliver("/script-running-callback/",
                              _checked(RUNNING_CALLBACK, {"script_id": script_id, "started_at": started}))
            if self.run_seconds:
                time.sleep(self.run_seconds)
            result = _checked(RESULT_CALLBACK, {
                "script_id": script_id,
                "success": True,
                "return_code": 0,
                "output": f"stub ran {script_id}\n",
                "started_at": started,
                "spend_time": time.time() - started,
            })
            with self._lock:
                if self.states.get(script_id) == "running":
                    self.states[script_id] = "reporting"
            if self._deliver("/script-result/", result):
                with self._lock:
                    self.held.discard(script_id)
                    if script_id in self.states:
                        self.states[script_id] = "done"

    # --- serving ----------------------------------------------------------------------------------------

    def start(self, workers: int = 8) -> StubSandbox:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as gunicorn serves the real one

            def _answer(self, code: int, payload: Any, message: Message | None = ERROR) -> None:
                data = json.dumps(_checked(message, payload) if message is not None else payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                challenge = self.headers.get(node_proof.CHALLENGE_HEADER)
                if node_proof.valid_challenge(challenge):
                    self.send_header(node_proof.PROOF_HEADER, node_proof.sign([stub.token], str(challenge), code, data))
                if code == 429:
                    self.send_header("Retry-After", "1")
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") != f"Token {stub.token}":
                    self._answer(403, {"error": "invalid or missing token"})
                    return False
                return True

            def _reset(self) -> None:
                """End the connection with a TCP RST, as a peer that crashed or dropped a kept-alive socket."""
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if not self._authorized():
                    return
                if self.path != "/function/run-python":
                    self._answer(404, {"error": "Not Found"})
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._answer(400, {"error": "bad body"})
                    return
                wrong = HANDOFF.problems(body, limit=1)
                if wrong:
                    self._answer(400, {"error": wrong[0]})
                    return
                script_id = body["script_id"]
                if stub.refuse:
                    self._answer(400, {"error": "refused by the stub"})
                    return
                with stub._lock:
                    stub.posts[script_id] += 1
                    planned = stub.planned.get(script_id)
                    if planned:
                        reset: str | None = planned.pop(0)
                    else:
                        reset = stub.resets.pop(0) if stub.resets else None
                if reset == "before":
                    stub.answers.append((script_id, "reset before"))
                    self._reset()
                    return
                code, state = stub.submit(body)
                stub.answers.append((script_id, f"reset after {code}" if reset == "after" else str(code)))
                if reset == "after":
                    self._reset()
                    return
                if code == 202:
                    self._answer(202, {"accepted": True}, HANDOFF_ACCEPTED)
                elif code == 409:
                    self._answer(409, {"error": f"script_id {script_id} is already here", "state": state},
                                 HANDOFF_DUPLICATE)
                elif code == 503:
                    self._answer(503, {"error": "stub told to be unhealthy"})
                else:
                    self._answer(code, {"error": str(code)})

            def do_GET(self) -> None:
                if self.path == "/ready" and not stub.without_ready:
                    self._answer(*stub.ready())
                    return
                if self.path == "/health":
                    self._answer(503 if stub.unhealthy else 200, stub.health(), HEALTH)
                    return
                if self.path == "/_stub/counts":
                    with stub._lock:
                        counts = {"accepted": dict(stub.accepted), "accepted_at": dict(stub.accepted_at)}
                    self._answer(200, counts, None)  # the stub's own route: not in the contract
                    return
                if not self._authorized():
                    return
                match = _RUNS.match(self.path)
                if match is None:
                    self._answer(404, {"error": "Not Found"})
                    return
                script_id = int(match.group(1))
                state = stub.status(script_id)
                if state is not None:
                    self._answer(200, {"script_id": script_id, "state": state}, RUN_STATE)
                else:
                    self._answer(404, {"error": f"script_id {script_id} is not here"}, NOT_HERE)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        ThreadingHTTPServer.daemon_threads = True
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.request_queue_size = 1024
        self.port = int(self._server.server_address[1])
        serve = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        serve.start()
        self._threads = [serve]
        for _ in range(workers):
            worker = threading.Thread(target=self._worker, daemon=True)
            worker.start()
            self._threads.append(worker)
        return self

    def stop(self) -> None:
        """Stop answering (the port is released: connections are refused, as from a dead node)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        for _ in self._threads[1:]:
            self._jobs.put(None)

    def __enter__(self) -> StubSandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _checked(message: Message, body: dict[str, Any]) -> dict[str, Any]:
    """The body, after checking it against the contract: a stub that breaks it fails loudly, not the test oddly."""
    message.check(body)
    return body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", required=True)
    parser.add_argument("--scheduler-url")
    parser.add_argument("--scheduler-token")
    args = parser.parse_args()
    stub = StubSandbox(args.token, args.scheduler_url, args.scheduler_token, host=args.host, port=args.port)
    stub.start()
    print(f"stub-sandbox listening on {stub.url}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    stub.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
