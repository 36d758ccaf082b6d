"""Sandbox nodes as the dispatcher sees them: estimated free slots, backoff, and the two calls it makes.

The estimate comes from each node's /health (refreshed at most once a second) and is lowered by every
hand-off; a 429 or no answer takes the node out for a while. Several dispatchers share the nodes, so the
estimate can be wrong: a 429 is the correction, never a failure of the run.

The one question that matters for at-most-once is which failures of the POST prove the sandbox never
received it: only a refused or timed-out connect, and the answers the sandbox gives before accepting
(429, 403, a missing route). Anything after the request may have been sent is "uncertain" and left to the
sweeper, which asks the node.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError

from scheduler.sessions import ThreadSessions

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
HEALTH_INTERVAL = 1.0
DEFAULT_SLOTS = 10  # a node without /health slots (an upstream starter) is assumed to take this many
MAX_BACKOFF = 30.0


class Sent(enum.Enum):
    ACCEPTED = "accepted"  # 202 (or 200 from an upstream starter), or 409: the node already holds the run
    NOT_SENT = "not sent"  # provably never reached a sandbox: release the run
    REJECTED = "rejected"  # the sandbox refused this body (400/413): retrying cannot help
    UNCERTAIN = "uncertain"  # may have arrived: only the node can tell (sweeper)


@dataclass(frozen=True)
class HandOff:
    sent: Sent
    reason: str = ""


class Status(enum.Enum):
    HERE = "here"  # the node runs it or still holds its result
    GONE = "gone"  # the node has neither: it never got it, or its result was acknowledged
    NO_ANSWER = "no answer"


@dataclass
class Node:
    url: str
    free: int = DEFAULT_SLOTS
    available_at: float = 0.0
    failures: int = 0
    checked_at: float = field(default=-1e9)

    def usable(self, now: float) -> bool:
        return now >= self.available_at


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

    def __init__(self, urls: tuple[str, ...], token: str) -> None:
        self.nodes = {url: Node(url) for url in urls}
        self.headers = {"Authorization": f"Token {token}"}
        self._lock = threading.Lock()
        self._sessions = ThreadSessions()
        self._rotation = 0

    @property
    def session(self) -> requests.Session:
        return self._sessions.get()

    def refresh(self) -> None:
        """Re-read /health of nodes whose estimate is older than a second (and whose backoff is over)."""
        now = time.monotonic()
        for node in list(self.nodes.values()):
            if node.usable(now) and now - node.checked_at >= HEALTH_INTERVAL:
                self._health(node)

    def _health(self, node: Node) -> None:
        try:
            response = self.session.get(f"{node.url}/health", timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
            free = DEFAULT_SLOTS
            if response.status_code == 200:
                slots = (
                    response.json().get("slots")
                    if response.headers.get("content-type", "").startswith("application/json")
                    else None
                )
                if isinstance(slots, dict) and isinstance(slots.get("free"), int):
                    free = max(0, int(slots["free"]))
            elif response.status_code != 404:  # 404: an upstream starter without /health
                raise requests.RequestException(f"health answered {response.status_code}")
        except (requests.RequestException, ValueError) as exc:
            self.down(node.url, f"health: {exc}")
            return
        with self._lock:
            node.free, node.checked_at, node.failures = free, time.monotonic(), 0

    def capacity(self) -> int:
        now = time.monotonic()
        with self._lock:
            return sum(n.free for n in self.nodes.values() if n.usable(now))

    def next_ready_in(self) -> float:
        """Seconds until some node is usable again (0 when one is)."""
        now = time.monotonic()
        with self._lock:
            return max(0.0, min((n.available_at for n in self.nodes.values()), default=now) - now)

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

    def busy(self, url: str, retry_after: float) -> None:
        with self._lock:
            node = self.nodes[url]
            node.free = 0
            node.available_at = time.monotonic() + max(0.2, min(retry_after, MAX_BACKOFF))
            node.checked_at = -1e9

    def down(self, url: str, reason: str) -> None:
        with self._lock:
            node = self.nodes[url]
            node.failures += 1
            node.free = 0
            node.available_at = time.monotonic() + min(MAX_BACKOFF, 0.5 * 2 ** min(node.failures, 6))
            node.checked_at = -1e9
        log.warning("sandbox node %s skipped: %s", url, reason)

    def post(self, url: str, body: dict[str, Any]) -> HandOff:
        """POST one run; the answer is classified, the node's estimate adjusted."""
        try:
            response = self.session.post(
                f"{url}/function/run-python", json=body, headers=self.headers, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)
            )
        except requests.RequestException as exc:
            if _never_sent(exc):
                self.down(url, f"connect: {exc}")
                return HandOff(Sent.NOT_SENT, "node not reachable")
            log.warning("hand-off of run %s to %s uncertain: %s", body.get("script_id"), url, exc)
            self.down(url, f"post: {type(exc).__name__}")
            return HandOff(Sent.UNCERTAIN, type(exc).__name__)
        code = response.status_code
        if code in (200, 202, 409):
            return HandOff(Sent.ACCEPTED)
        if code == 429:
            self.busy(url, _retry_after(response))
            return HandOff(Sent.NOT_SENT, "busy")
        if code in (403, 404, 405):
            # Refused before the run is looked at: wrong token or not a sandbox at this URL.
            self.down(url, f"answered {code}")
            return HandOff(Sent.NOT_SENT, f"HTTP {code}")
        if code in (400, 413, 422):
            return HandOff(Sent.REJECTED, _error_text(response))
        self.down(url, f"answered {code}")
        return HandOff(Sent.UNCERTAIN, f"HTTP {code}")

    def status(self, url: str, run_id: int) -> Status:
        """GET /function/runs/{id}. Only the sandbox's own JSON 404 counts as "gone"."""
        try:
            response = self.session.get(
                f"{url}/function/runs/{run_id}", headers=self.headers, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)
            )
        except requests.RequestException:
            return Status.NO_ANSWER
        if response.status_code == 200:
            return Status.HERE
        if response.status_code == 404 and response.headers.get("content-type", "").startswith("application/json"):
            return Status.GONE
        return Status.NO_ANSWER


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
