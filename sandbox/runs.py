"""RunService: slots, script fetch, one driver run per request, results into the outbox.

Knows nothing of HTTP. Every accepted run ends with exactly one result in the outbox,
whatever fails on the way; a crash is caught by the outbox's ledger on the next start.
An id is accepted at most once: one the outbox remembers (running, reporting, or done and
kept as a tombstone) is refused as a duplicate, and a node that is not healthy refuses new
runs before it takes a slot, so a refused run provably did not start.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import requests

from observability import logs
from pipeline_contract.schemas import SCRIPT_MAX_BYTES
from sandbox import script_fetch, texts
from sandbox.driver import Job, RunResult
from sandbox.egress_policy import Address, EgressPolicy
from sandbox.metrics import RunMetrics
from sandbox.network import host_addresses as this_hosts_addresses

log = logging.getLogger(__name__)
SCRIPT_FETCH_TIMEOUT = 60
# A run that ends sooner sends no running callback: its result (with the same started_at) takes its place, and
# the scheduler and the runner are spared a request and a commit while the run is at its shortest.
RUNNING_CALLBACK_DELAY = 0.2
REMOVAL_WAITS_FOR_RESULT = 5.0  # at most, seconds a finished runner waits for its result to be taken before removal
REASON_MAX, REASON_HEAD = 400, 80  # characters of a sandbox failure shown in the run's output, of them from its start


class Busy(Exception):
    """Every slot is taken."""


class Duplicate(Exception):
    """This script_id is held here or was: `state` is "running", "reporting" or "done"."""

    def __init__(self, script_id: int, state: str) -> None:
        super().__init__(script_id)
        self.script_id = script_id
        self.state = state


class Unavailable(Exception):
    """The node cannot take runs now (Podman, image, outbox); str() says why."""


_REFUSALS = {Busy: "busy", Duplicate: "duplicate", Unavailable: "unavailable"}  # metrics labels


class Driver(Protocol):
    def run(self, job: Job, timeout: int, on_container: Any, on_started: Any,
            runner: Any = None) -> RunResult: ...
    def cleanup(self, container: str) -> bool: ...
    def orphans(self) -> list[str]: ...


class Ledger(Protocol):
    def run_accepted(self, script_id: int, secret: str = "") -> bool: ...
    def run_container(self, script_id: int, container: str) -> None: ...
    def running(self, script_id: int, started_at: float, delay: float = 0.0) -> None: ...
    def result(self, script_id: int, body: dict[str, object]) -> None: ...
    def wait_reported(self, script_id: int, timeout: float, cancel: threading.Event) -> bool: ...
    def in_flight(self) -> list[Any]: ...
    def holds(self, script_id: int) -> str | None: ...


@dataclass(frozen=True)
class RunRequest:
    script_id: int
    env: dict[str, str]
    context_data: Any = None
    script_content: str | None = None
    script_url: str | None = None
    callback_secret: str = field(default="", repr=False)  # the run's credential for its callbacks
    script_name: str | None = None  # for log lines only
    dtable_uuid: str | None = None  # for log lines only


@dataclass
class RunService:
    driver: Driver
    outbox: Ledger
    slots: int
    timeout: int
    time_zone: str = "UTC"
    alternative_file_server_root: str = ""
    pool: Any = None  # a WarmPool, or None for the cold path only
    network: str = "none"  # none, seatable or open (PYTHON_RUNNER_NETWORK)
    egress_allow: str = ""  # PYTHON_RUNNER_EGRESS_ALLOW
    ca_bundle: str = ""  # PEM text of extra CAs for the runners
    node: str = ""  # this node's name, on every log line about a run
    metrics: RunMetrics | None = None
    extra_env: dict[str, str] = field(default_factory=dict)  # the admin's (PYTHON_RUNNER_OTHER_OPTIONS --env)
    refusal: Callable[[], str | None] = lambda: None  # why the node cannot take runs now, or None
    host_addresses: Callable[[], tuple[Address, ...]] = this_hosts_addresses  # refused to the script download
    _active: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pool: ThreadPoolExecutor | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)  # a graceful stop: no more waiting
    finished: int = 0

    def __post_init__(self) -> None:
        # Twice the slots: a run's thread still removes its container after its slot is free again.
        self._pool = ThreadPoolExecutor(max_workers=self.slots * 2, thread_name_prefix="run")

    @property
    def busy(self) -> int:
        return len(self._active)

    def submit(self, request: RunRequest) -> None:
        """Accept a run, or raise Duplicate (remembered id), Unavailable (unhealthy) or Busy (no slot)."""
        script_id = request.script_id
        try:
            with self._lock:
                if script_id in self._active:
                    raise Duplicate(script_id, "running")
                try:
                    state = self.outbox.holds(script_id)
                    if state is not None:
                        raise Duplicate(script_id, state)
                    reason = self.refusal()
                    if reason is not None:
                        raise Unavailable(reason)
                    if len(self._active) >= self.slots:
                        raise Busy()
                    if not self.outbox.run_accepted(script_id, request.callback_secret):
                        raise Duplicate(script_id, self.outbox.holds(script_id) or "running")
                except sqlite3.Error as exc:
                    raise Unavailable(texts.OUTBOX_UNUSABLE.format(detail=exc)) from None
                self._active.add(script_id)
        except (Busy, Duplicate, Unavailable) as refused:
            if self.metrics is not None:
                self.metrics.refused.labels(_REFUSALS[type(refused)]).inc()
            raise
        if self.metrics is not None:
            self.metrics.accepted.inc()
        self._log(request).info("accepted")
        assert self._pool is not None
        self._pool.submit(self._run, request)

    def _log(self, request: RunRequest) -> logs.RunLog:
        return logs.for_run(log, request.script_id, request.script_name, request.dtable_uuid, self.node)

    def status(self, script_id: int) -> str | None:
        """What this node knows of a run: "running", "reporting" (result not yet acknowledged),
        "done" (acknowledged; a tombstone) or None (never accepted here, within the tombstone time)."""
        if script_id in self._active:
            return "running"
        return self.outbox.holds(script_id)

    def _run(self, request: RunRequest) -> None:
        container = ""

        def remember(name: str) -> None:
            nonlocal container
            container = name
            self.outbox.run_container(request.script_id, name)

        try:
            result = self._execute(request, remember)
        except Exception as exc:  # a failure of one run never stops the service
            self._log(request).exception("failed in the sandbox")
            result = RunResult(None, texts.SANDBOX_ERROR.format(reason=_reason(exc)), time.time(), 0.0, "error")
        self._log(request).info("finished: %s (return code %s, %.2f s)", result.kind, result.return_code,
                                result.spend_time)
        if self.metrics is not None:
            self.metrics.ended(result.kind, result.spend_time)
        # The slot is free before the result is queued, so a dispatcher the result wakes finds it free; the
        # ledger still says "running" until the result is queued, so the id stays refused meanwhile.
        with self._lock:
            self._active.discard(request.script_id)
            self.finished += 1
        try:
            self.outbox.result(request.script_id, result.body(request.script_id))
            if container:
                # Removing a container keeps Podman busy for tens of milliseconds of CPU: after the result
                # is on its way, not while the scheduler takes it.
                self.outbox.wait_reported(request.script_id, REMOVAL_WAITS_FOR_RESULT, self._stopping)
        finally:
            if container:
                self.driver.cleanup(container)

    def _execute(self, request: RunRequest, remember: Any) -> RunResult:
        script = self._script(request)
        if isinstance(script, RunResult):
            return script
        job = Job(request.script_id, script, _input_text(request.context_data), self._env(request.env),
                  egress=self._egress(request.env), ca_bundle=self.ca_bundle)
        # The pool picks by the script's import lines, a hint that needs no exact decoding.
        runner = self.pool.take(script.decode("utf-8", errors="replace")) if self.pool is not None else None
        return self.driver.run(job, self.timeout, remember,
                               lambda started: self.outbox.running(request.script_id, started, RUNNING_CALLBACK_DELAY),
                               runner=runner)

    def _script(self, request: RunRequest) -> bytes | RunResult:
        """The script's bytes: the runner decodes them as Python decodes a file (BOM, coding declaration)."""
        if request.script_content is not None:
            return request.script_content.encode()
        if not request.script_url:
            return RunResult(None, texts.SCRIPT_URL_MISSING, time.time(), 0.0, "fetch_failed")
        url = self._rewrite(request.script_url)
        try:
            status, body = script_fetch.fetch(url, self._fetch_policy(request.env), self.host_addresses,
                                              SCRIPT_FETCH_TIMEOUT, SCRIPT_MAX_BYTES)
        except script_fetch.FetchRefused as refused:
            log.warning("run %s: script fetch refused: %s", request.script_id, refused)
            return RunResult(None, texts.FETCH_REFUSED.format(reason=refused), time.time(), 0.0, "fetch_failed")
        except requests.RequestException as exc:
            self._log(request).warning("script fetch failed: %s", type(exc).__name__)
            return RunResult(None, texts.FAIL_TO_GET_SCRIPT, time.time(), 0.0, "fetch_failed")
        if status != 200 or len(body) > SCRIPT_MAX_BYTES:
            return RunResult(None, texts.FAIL_TO_GET_SCRIPT, time.time(), 0.0, "fetch_failed")
        return body

    def _fetch_policy(self, env: dict[str, str]) -> EgressPolicy:
        """What the open network lets a runner reach, whatever the run's mode: the internet, the run's SeaTable
        server and file server root, the admin's list; never loopback, link-local, private or this host unless
        listed. (In the seatable and none modes the script still comes from where SeaTable says it is.)"""
        extra = [self.alternative_file_server_root] if self.alternative_file_server_root else []
        return EgressPolicy.for_run("open", self.egress_allow, env.get("dtable_web_url"), extra)

    def _rewrite(self, url: str) -> str:
        """PYTHON_STARTER_ALTERNATIVE_FILE_SERVER_ROOT replaces the URL's scheme and host."""
        if not self.alternative_file_server_root:
            return url
        root = urlsplit(self.alternative_file_server_root)
        parts = urlsplit(url)
        path = root.path.rstrip("/") + parts.path
        return urlunsplit((root.scheme, root.netloc, path, parts.query, ""))

    def _egress(self, env: dict[str, str]) -> EgressPolicy | None:
        """The run's own SeaTable server (and file server root) plus the admin's allow list."""
        if self.network == "none":
            return None
        extra = [self.alternative_file_server_root] if self.alternative_file_server_root else []
        return EgressPolicy.for_run(self.network, self.egress_allow, env.get("dtable_web_url"), extra)

    def _env(self, env: dict[str, str]) -> dict[str, str]:
        return {**self.extra_env, **env, "is_cloud": "1", "TZ": self.time_zone}

    def recover(self) -> int:
        """After a crash: end what was in flight as lost, remove its containers and other orphans."""
        lost = 0
        for entry in self.outbox.in_flight():
            if entry.container:
                self.driver.cleanup(entry.container)
            lost_result = RunResult(None, texts.SANDBOX_LOST, entry.accepted_at, 0.0, "lost")
            if self.metrics is not None:
                self.metrics.ended(lost_result.kind, 0.0)
            logs.for_run(log, entry.script_id, node=self.node).warning("lost: the sandbox restarted while it ran")
            body = lost_result.body(entry.script_id)
            body["lost"] = True  # no result of its own: the scheduler does not count it (upstream's starter sent none)
            self.outbox.result(entry.script_id, body)
            lost += 1
        for container in self.driver.orphans():
            self.driver.cleanup(container)
        return lost

    def shutdown(self, wait: bool = True) -> None:
        self._stopping.set()  # finished runners are removed at once: the stop waits for the outbox anyway
        if self._pool is not None:
            self._pool.shutdown(wait=wait)


def _input_text(context_data: Any) -> str:
    """What upstream writes to the runner's input file: the context as JSON."""
    import json

    if context_data is None:
        return ""
    if isinstance(context_data, str):
        return context_data
    return json.dumps(context_data)


def _reason(exc: Exception) -> str:
    """The failure's first line, at most REASON_MAX characters: Podman's and runc's causes come last, after
    long prefixes (the container's id, "runc create failed: ..."), so a longer line keeps its end."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= REASON_MAX else text[:REASON_HEAD] + " … " + text[-(REASON_MAX - REASON_HEAD - 3):]
