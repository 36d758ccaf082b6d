"""Sandbox nodes as the dispatcher sees them: readiness, estimated free slots, backoff, and the two calls it makes.

Readiness comes from each node's cheap `GET /ready` (polled at most once a second): 200 gives the free slots,
503 or no answer takes the node out until a later poll says it recovered. Only answers the node signed with
its own token count (sandbox.node_proof: a fresh challenge per request, so the token is never sent to learn
whether a node is real): a fake node, a node with the wrong token, or one without /ready (an older sandbox,
upstream's starter) gets no run, and an unsigned "never accepted" never releases a run. Every hand-off
lowers the estimate; several dispatchers share the nodes, so it can be wrong: a 429 is the correction,
never a failure of the run.

At-most-once hinges on one question: which failures of the POST prove the sandbox never received it? Only
a refused or timed-out connect and the answers a sandbox gives instead of accepting (429, 503, 403, a
missing route), and only when no earlier attempt for the run may have arrived. Anything else (a reset,
a read timeout, a 5xx) is retried at once on the same node, on a fresh connection: the POST is idempotent
by script_id, so 409 ("already here") means accepted. Only when the retries run out is the run left
"uncertain" for the sweeper, which asks the node.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError

from pipeline_contract import Message
from pipeline_contract.schemas import NOT_HERE, NOT_READY, READY, RUN_STATE
from sandbox import node_proof
from sandbox.tls import describe_failure, innermost_name
from scheduler.config import Config
from scheduler.sessions import ThreadSessions

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
READY_TIMEOUT = (1.0, 2.0)  # /ready answers from memory; a node slower than this is not ready
READY_INTERVAL = 1.0
DEFAULT_SLOTS = 10  # a signed /ready without a slot count is assumed to take this many
UNSIGNED = "answer not signed with the node's token (a wrong token, or not this pipeline's sandbox at this URL)"
MAX_BUSY_BACKOFF = 30.0  # longest Retry-After honoured
MAX_POLL_BACKOFF = 5.0  # a silent node is asked again at least this often, so its recovery is seen soon
# Pauses before the retries of one hand-off on the same node, and the most time all attempts may take.
RETRY_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
RETRY_BUDGET = 20.0


class Sent(enum.Enum):
    ACCEPTED = "accepted"  # 202 (or 200 from an upstream starter), or 409: the node already holds the run
    NOT_SENT = "not sent"  # provably never reached a sandbox: release the run (it may go to another node)
    REJECTED = "rejected"  # the sandbox refused this body (400/413/422): retrying cannot help
    UNCERTAIN = "uncertain"  # may have arrived and the retries did not tell: only the node can (sweeper)


@dataclass(frozen=True)
class HandOff:
    sent: Sent
    reason: str = ""
    attempts: int = 1


class Status(enum.Enum):
    """A node's answer to GET /function/runs/{id} (the contract's states, plus no answer)."""

    RUNNING = "running"  # executing
    REPORTING = "reporting"  # ended; its result waits on the node until the scheduler acknowledges it
    DONE = "done"  # its result was acknowledged (a tombstone)
    NEVER = "never"  # the node has no record of it: never accepted there (within the tombstone time)
    NO_ANSWER = "no answer"


_STATES = {"running": Status.RUNNING, "reporting": Status.REPORTING, "done": Status.DONE}


@dataclass
class Node:
    url: str
    token: str = field(default="", repr=False)
    free: int = 0
    ready: bool = False  # the last readiness poll said it takes runs
    reason: str = ""  # why it is out, while it is (logged once per cause)
    check_at: float = 0.0  # monotonic time of the next readiness poll
    busy_until: float = 0.0  # after a 429 no POST goes there before this
    failures: int = 0  # readiness polls in a row without an answer

    def usable(self, now: float) -> bool:
        return self.ready and now >= self.busy_until


def _never_sent(exc: requests.RequestException) -> bool:
    """True only for connect failures: no byte of the request can have reached the node."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError) and exc.args:
        inner = exc.args[0]
        if isinstance(inner, MaxRetryError):
            # NewConnectionError (refused, unreachable, DNS) is a ConnectTimeoutError subclass in urllib3 2.
            return isinstance(inner.reason, ConnectTimeoutError)
    return False


class Nodes:
    """The configured nodes; thread-safe, one HTTP session per thread."""

    def __init__(
        self,
        urls: tuple[str, ...],
        tokens: str | Mapping[str, str],
        verify: str | bool = True,
        client_cert: tuple[str, str] | None = None,
    ) -> None:
        """`tokens`: one token for every node, or each node's own by URL."""
        token_of = (lambda url: tokens) if isinstance(tokens, str) else (lambda url: tokens.get(url, ""))
        self.nodes = {url: Node(url, token_of(url)) for url in urls}
        self._lock = threading.Lock()
        self._sessions = ThreadSessions(verify=verify, cert=client_cert)
        self._rotation = 0
        self._pollers: ThreadPoolExecutor | None = None
        self._off_contract: set[tuple[str, str]] = set()  # (node, problem) already logged

    @classmethod
    def from_config(cls, config: Config) -> Nodes:
        tokens = {url: config.node_token(url) for url in config.sandbox_urls}
        client_cert = config.dispatch_tls if config.dispatch_tls[0] else None
        return cls(config.sandbox_urls, tokens, config.sandbox_ca_bundle or True, client_cert)

    @property
    def session(self) -> requests.Session:
        return self._sessions.get()

    def headers(self, url: str) -> dict[str, str]:
        return {"Authorization": f"Token {self.nodes[url].token}"}

    def _signed_get(
        self, node: Node, path: str, headers: dict[str, str], timeout: Any
    ) -> tuple[requests.Response, bool]:
        """GET with a fresh challenge; the answer and whether the node signed it with its token."""
        challenge = node_proof.new_challenge()
        response = self.session.get(
            f"{node.url}{path}", headers={**headers, node_proof.CHALLENGE_HEADER: challenge}, timeout=timeout
        )
        signed = node_proof.verify(
            [node.token], challenge, response.status_code, response.content,
            response.headers.get(node_proof.PROOF_HEADER),
        )  # fmt: skip
        return response, signed

    # --- readiness ----------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Poll /ready of every node whose next check is due, in parallel (a silent node delays none other)."""
        now = time.monotonic()
        due = [node for node in list(self.nodes.values()) if now >= node.check_at]
        if len(due) == 1:
            self._check(due[0])
        elif due:
            if self._pollers is None:
                self._pollers = ThreadPoolExecutor(max_workers=min(8, len(self.nodes)), thread_name_prefix="ready")
            list(self._pollers.map(self._check, due))

    def _check(self, node: Node) -> None:
        try:
            # No token goes out here: the node proves it holds its own by signing the answer.
            response, signed = self._signed_get(node, "/ready", {}, READY_TIMEOUT)
        except requests.RequestException as exc:
            self._sessions.reset()
            self._silent(node, f"no answer to /ready: {describe_failure(exc)}")
            return
        code = response.status_code
        if not signed:
            self._silent(node, f"/ready answered {code}, {UNSIGNED}")
        elif code == 200:
            self._conforms(node.url, "/ready", response, READY)
            self._ready(node, _free_slots(response))
        elif code == 503:
            self._conforms(node.url, "/ready", response, NOT_READY)
            self._unhealthy(node, f"unhealthy: {_error_text(response)}")
        else:
            self._silent(node, f"/ready answered {code}")

    def _ready(self, node: Node, free: int) -> None:
        with self._lock:
            was_out = node.reason
            node.ready, node.free, node.failures, node.reason = True, free, 0, ""
            node.check_at = time.monotonic() + READY_INTERVAL
        if was_out:
            log.info("sandbox node %s is ready again (%d free slots)", node.url, free)

    def _unhealthy(self, node: Node, reason: str) -> None:
        """The node says it cannot run anything now: out until a poll a second later says otherwise."""
        self._out(node, reason, time.monotonic() + READY_INTERVAL)

    def _silent(self, node: Node, reason: str) -> None:
        """No usable answer: out, asked again after a growing but short pause."""
        with self._lock:
            node.failures += 1
            pause = min(MAX_POLL_BACKOFF, 0.25 * 2 ** min(node.failures, 6))
        self._out(node, reason, time.monotonic() + pause)

    def _out(self, node: Node, reason: str, check_at: float) -> None:
        with self._lock:
            changed = reason != node.reason
            node.ready, node.free, node.reason, node.check_at = False, 0, reason, check_at
        if changed:
            log.warning("sandbox node %s skipped until it recovers: %s", node.url, reason)

    def _conforms(self, url: str, what: str, response: requests.Response, message: Message) -> None:
        """Check a node's answer against the contract (pipeline_contract); a breach is logged once per node and
        cause, and the answer is still read as before (free slots by default, an unknown state as running)."""
        try:
            data = response.json()
        except ValueError:
            data = None
        wrong = message.problems(data, limit=1)
        if not wrong:
            return
        key = (url, f"{what}: {wrong[0]}")
        with self._lock:
            new = key not in self._off_contract
            self._off_contract.add(key)
        if new:
            log.warning("sandbox node %s: its %s answer (HTTP %d) breaks the contract: %s",
                        url, what, response.status_code, wrong[0])

    def recheck(self) -> None:
        """Poll the ready nodes at the next refresh rather than a second later: a slot may have been freed."""
        now = time.monotonic()
        with self._lock:
            for node in self.nodes.values():
                if node.ready and node.busy_until <= now:
                    node.check_at = min(node.check_at, now)

    def unhealthy(self, url: str, reason: str) -> None:
        self._unhealthy(self.nodes[url], reason)

    def down(self, url: str, reason: str) -> None:
        self._silent(self.nodes[url], reason)

    def busy(self, url: str, retry_after: float) -> None:
        with self._lock:
            node = self.nodes[url]
            node.free = 0
            node.busy_until = time.monotonic() + max(0.2, min(retry_after, MAX_BUSY_BACKOFF))
            node.check_at = node.busy_until

    # --- choosing a node ----------------------------------------------------------------------------------

    def capacity(self) -> int:
        now = time.monotonic()
        with self._lock:
            return sum(n.free for n in self.nodes.values() if n.usable(now))

    def next_ready_in(self) -> float:
        """Seconds until some node may be usable again (0 when one is)."""
        now = time.monotonic()
        with self._lock:
            soonest = min((max(n.busy_until, n.check_at) for n in self.nodes.values()), default=now)
        return max(0.0, soonest - now)

    def take(self) -> str | None:
        """A node with a free slot (the most free first, rotating among equals), its estimate lowered."""
        now = time.monotonic()
        with self._lock:
            candidates = [n for n in self.nodes.values() if n.usable(now) and n.free > 0]
            if not candidates:
                return None
            self._rotation += 1
            best = max(n.free for n in candidates)
            top = [n for n in candidates if n.free == best]
            node = top[self._rotation % len(top)]
            node.free -= 1
            return node.url

    # --- the hand-off ---------------------------------------------------------------------------------------

    def post(self, url: str, body: dict[str, Any]) -> HandOff:
        """POST one run, retrying what may have arrived on the same node; the node's estimate is adjusted."""
        run_id = body.get("script_id")
        may_have_arrived = False  # once true, no answer can prove the run is not on this node
        reason = ""
        started = time.monotonic()
        for attempt in range(1, len(RETRY_DELAYS) + 2):
            if attempt > 1:
                time.sleep(RETRY_DELAYS[attempt - 2])
            try:
                response = self.session.post(
                    f"{url}/function/run-python",
                    json=body,
                    headers=self.headers(url),
                    timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
                )
            except requests.RequestException as exc:
                self._sessions.reset()  # the retry must not reuse a connection from the same pool
                if _never_sent(exc):
                    reason = f"connect: {type(exc).__name__}"
                    if not may_have_arrived:
                        self.down(url, reason)
                        return HandOff(Sent.NOT_SENT, "node not reachable", attempt)
                else:
                    may_have_arrived = True
                    reason = innermost_name(exc)
                    log.info("hand-off of run %s to %s: %s; retrying (attempt %d)", run_id, url, reason, attempt)
            else:
                code = response.status_code
                if code in (200, 202, 409):
                    if attempt > 1:
                        log.info("hand-off of run %s to %s accepted on attempt %d (%d)", run_id, url, attempt, code)
                    return HandOff(Sent.ACCEPTED, f"HTTP {code}", attempt)
                reason = f"HTTP {code}"
                if not may_have_arrived and code in (429, 503, 403, 404, 405, 400, 413, 422):
                    return self._refused(url, response, attempt)
                may_have_arrived = True  # a 5xx, or a refusal after an attempt that may have been accepted
            if attempt > 1 and time.monotonic() - started > RETRY_BUDGET:
                break  # at least one retry, however slow the first attempt was
        log.warning("hand-off of run %s to %s uncertain after %d attempts (%s): the sweeper asks the node",
                    run_id, url, attempt, reason)
        self.down(url, f"hand-off uncertain: {reason}")
        return HandOff(Sent.UNCERTAIN, reason, attempt)

    def _refused(self, url: str, response: requests.Response, attempt: int) -> HandOff:
        """Answers that mean "not accepted" when nothing earlier for the run may have arrived."""
        code = response.status_code
        if code == 429:
            self.busy(url, _retry_after(response))
            return HandOff(Sent.NOT_SENT, "busy", attempt)
        if code == 503:
            self.unhealthy(url, f"unhealthy: {_error_text(response)}")
            return HandOff(Sent.NOT_SENT, "node unhealthy", attempt)
        if code in (403, 404, 405):
            # Refused before the run is looked at: wrong token or not a sandbox at this URL.
            self.down(url, f"answered {code} to a hand-off")
            return HandOff(Sent.NOT_SENT, f"HTTP {code}", attempt)
        return HandOff(Sent.REJECTED, _error_text(response), attempt)

    def status(self, url: str, run_id: int) -> Status:
        """GET /function/runs/{id}. Only the sandbox's own signed JSON 404 counts as "never accepted"."""
        node = self.nodes[url]
        try:
            response, signed = self._signed_get(
                node, f"/function/runs/{run_id}", self.headers(url), (CONNECT_TIMEOUT, READ_TIMEOUT)
            )
        except requests.RequestException:
            self._sessions.reset()
            return Status.NO_ANSWER
        if not signed:
            log.warning("sandbox node %s about run %s: %s", url, run_id, UNSIGNED)
            return Status.NO_ANSWER
        is_json = response.headers.get("content-type", "").startswith("application/json")
        if response.status_code == 200:
            self._conforms(url, "run state", response, RUN_STATE)
            try:
                state = response.json().get("state") if is_json else None
            except (ValueError, AttributeError):
                state = None
            # An unknown state still means the node holds the run; it is treated as executing.
            return _STATES.get(state, Status.RUNNING) if isinstance(state, str) else Status.RUNNING
        if response.status_code == 404 and is_json:
            self._conforms(url, "run state", response, NOT_HERE)
            return Status.NEVER
        return Status.NO_ANSWER


def _free_slots(response: requests.Response) -> int:
    try:
        slots = (
            response.json().get("slots")
            if response.headers.get("content-type", "").startswith("application/json")
            else None
        )
    except (ValueError, AttributeError):
        slots = None
    free = slots.get("free") if isinstance(slots, dict) else None
    # A JSON integer, as the contract reads it: 3 or 3.0 (not true).
    if (isinstance(free, int) and not isinstance(free, bool)) or (isinstance(free, float) and free.is_integer()):
        return max(0, int(free))
    return DEFAULT_SLOTS


def _retry_after(response: requests.Response) -> float:
    try:
        return float(response.headers.get("Retry-After", "1"))
    except ValueError:
        return 1.0


def _error_text(response: requests.Response) -> str:
    try:
        data = response.json()
        text = str(data.get("error") or data) if isinstance(data, dict) else str(data)
    except ValueError:
        text = response.text
    return f"HTTP {response.status_code}: {text[:200]}"
