"""NodeHealth: whether this node can take runs, checked in the background about once a second.

Podman answering, the runner image present, the outbox writable, under its cap and on a disk
with room: a node missing any of these would fail every run handed to it, so it refuses new
runs (503) and says why. /ready, /health and the hand-off read the last check and never wait
on Podman themselves; a check that stops finishing is itself a problem.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sandbox import texts
from sandbox.limits import human_size
from sandbox.podman_api import PingFailure, describe

log = logging.getLogger(__name__)

INTERVAL = 1.0
STALE_AFTER = 15.0  # a check takes at most two Podman calls of PODMAN_TIMEOUT each
PODMAN_TIMEOUT = 5.0
# A Podman call that failed without a refused connection (a timeout, an error answer: a loaded host)
# counts after this many checks in a row; no socket or a refused connection counts at once.
PODMAN_FAILURES = 3
RSS_EVERY = 5.0
MIN_FREE_BYTES = 64 << 20


class Podman(Protocol):
    def ping_error(self) -> PingFailure | None: ...
    def image_exists(self, image: str) -> bool: ...


class OutboxView(Protocol):
    def disk_bytes(self) -> int: ...
    def check_writable(self) -> str | None: ...


@dataclass(frozen=True)
class Check:
    at: float  # time.monotonic() when it finished
    problems: tuple[str, ...]
    outbox_bytes: int = 0
    disk_free_bytes: int = 0


@dataclass
class NodeHealth:
    podman: Podman  # its own client with a short timeout, so a hung Podman only stalls this thread
    image: str
    outbox: OutboxView
    state_dir: Path
    outbox_max_bytes: int
    min_free_bytes: int = MIN_FREE_BYTES
    pool_rss: Callable[[], list[int | None]] | None = None
    # Work that needs Podman and may wait for it (removals that failed while it was down): run after a check
    # that found it answering.
    sweep: Callable[[], object] | None = None
    interval: float = INTERVAL
    last: Check | None = None
    idle_runner_rss: list[int | None] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _rss_at: float = 0.0
    _reported: tuple[str, ...] = ()
    _podman_failures: int = 0
    _sweeping: threading.Thread | None = None

    def check_now(self) -> Check:
        problems: list[str] = []
        failure = self.podman.ping_error()
        if failure is None:
            try:
                if not self.podman.image_exists(self.image):
                    problems.append(texts.IMAGE_MISSING.format(image=self.image))
            except Exception as exc:
                failure = describe(exc)
        self._podman_failures = self._podman_failures + 1 if failure is not None else 0
        if failure is not None and (not failure.slow or self._podman_failures >= PODMAN_FAILURES):
            problems.append(texts.PODMAN_UNREACHABLE.format(detail=failure.detail))
        unusable = self.outbox.check_writable()
        if unusable is not None:
            problems.append(texts.OUTBOX_UNUSABLE.format(detail=unusable))
        size = self.outbox.disk_bytes()
        if size > self.outbox_max_bytes:
            problems.append(texts.OUTBOX_FULL.format(size=human_size(size), cap=human_size(self.outbox_max_bytes)))
        free = _free_bytes(self.state_dir)
        if free < self.min_free_bytes:
            problems.append(texts.DISK_LOW.format(free=human_size(free)))
        check = Check(time.monotonic(), tuple(problems), size, free)
        self._log_change(check.problems)
        self.last = check
        return check

    def _log_change(self, problems: tuple[str, ...]) -> None:
        if problems == self._reported:
            return
        if problems:
            log.error("node unhealthy, refusing new runs: %s", "; ".join(problems))
        else:
            log.info("node healthy again")
        self._reported = problems

    def problems(self) -> list[str]:
        """Why the node cannot take runs now ([] when it can), from the last check."""
        if self.last is None:
            return [texts.STARTING]
        stale = time.monotonic() - self.last.at
        if stale > STALE_AFTER:
            return [texts.CHECK_STALLED.format(seconds=stale), *self.last.problems]
        return list(self.last.problems)

    def refusal(self) -> str | None:
        """The reason new runs are refused, or None."""
        problems = self.problems()
        return "; ".join(problems) if problems else None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="node-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=PODMAN_TIMEOUT * 2 + 1)
            self._thread = None

    def _start_sweep(self) -> None:
        """In a thread of its own, one at a time: slow Podman work must not make the check look stalled."""
        if self._sweeping is not None and self._sweeping.is_alive():
            return
        assert self.sweep is not None
        self._sweeping = threading.Thread(target=self._sweep, args=(self.sweep,), name="podman-sweep", daemon=True)
        self._sweeping.start()

    @staticmethod
    def _sweep(sweep: Callable[[], object]) -> None:
        try:
            sweep()
        except Exception:
            log.exception("background removal of runners failed")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check_now()
                if self.sweep is not None and self._podman_failures == 0:
                    self._start_sweep()
                if self.pool_rss is not None and time.monotonic() - self._rss_at >= RSS_EVERY:
                    self._rss_at = time.monotonic()
                    self.idle_runner_rss = self.pool_rss()
            except Exception:
                log.exception("health check failed")


def _free_bytes(path: Path) -> int:
    try:
        stat = os.statvfs(path)
    except OSError:
        return 0
    return stat.f_bavail * stat.f_frsize
