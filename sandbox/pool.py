"""WarmPool: pre-started single-use runners, refilled in the background.

A pooled runner has already paid for create, attach, start, interpreter start-up, its
rlimits and seccomp filter, and the optional pre-imports; it waits for exactly one job on
stdin. Nothing secret is in it until the job arrives. Each serves one run and is then
removed, so no state passes from one run to the next. Refill never runs on the request
path, waits a moment after a take while other runners are idle (the run just started goes
first), and the pool gives way when the host runs short of memory.

Pre-imports follow the scripts: a run takes the runner whose pre-imports best match the
modules its script imports, and the runner made to replace it pre-imports what that script
needed. A stream of scripts that never touch pandas thus stops paying for importing it in
every runner, while pandas scripts keep finding it loaded.

Runners that end before they are ready are replaced more slowly each time in a row; and
pre-imports that take three runners in a row to their memory limit are dropped, with one
warning: the pool then serves bare runners instead of cycling through runners that never
get ready. (A Podman restart also ends idle runners' streams; that alone drops nothing.)
Where only rlimits bound a run, a pre-import over the limit fails inside a runner that
lives on with the memory it reserved; three such in a row count the same.
"""

from __future__ import annotations

import logging
import re
import select
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from sandbox.driver import ContainerDriver, Runner

log = logging.getLogger(__name__)
REFILL_THREADS = 2
# After a take, while other runners are still idle, the refill waits this long: the run that just started (and its
# result's way to the scheduler) gets the CPU first. An empty pool is refilled at once.
REFILL_PAUSE = 0.15
RETRY_AFTER_FAILURE = 2.0
# Runners that end before they are ready delay the next start, doubling up to MAX_HOLD; after OVER_LIMIT_IN_A_ROW
# of the same pre-imports in a row meet their memory limit, the pool stops pre-importing.
MAX_HOLD = 60.0
OVER_LIMIT_IN_A_ROW = 3
CHECK_EVERY = 1.0  # how often idle runners are looked at (ended? ready?) and the memory situation re-read
_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+([\w.]+)[ \t]+import\b|import[ \t]+([\w., \t]+))", re.MULTILINE)


def imported_modules(script: str) -> frozenset[str]:
    """Top-level modules a script imports, by a look at its import lines (a hint for picking a runner)."""
    found: set[str] = set()
    for source, names in _IMPORT.findall(script):
        for name in [source] if source else names.split(","):
            top = name.strip().split(" ")[0].split(".")[0]
            if top:
                found.add(top)
    return frozenset(found)


def pick(flavours: list[frozenset[str]], needs: frozenset[str]) -> int | None:
    """Index of the best idle runner for a script needing `needs`: an exact match, else the smallest
    one that has everything, else the one with the most of it (even none: still faster than cold)."""
    if not flavours:
        return None

    def score(flavour: frozenset[str]) -> tuple[bool, bool, int]:
        superset = needs <= flavour
        return flavour == needs, superset, -len(flavour) if superset else len(flavour & needs)

    return max(range(len(flavours)), key=lambda index: score(flavours[index]))


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


class WarmPool:
    def __init__(self, driver: ContainerDriver, size: int, preimport: str = "",
                 min_available: int = 1 << 30) -> None:
        self.driver = driver
        self.size = size
        self.preimport = preimport
        self.modules = frozenset(m.strip() for m in preimport.split(",") if m.strip())
        self.min_available = min_available
        self._idle: deque[Runner] = deque()
        self._wanted: deque[frozenset[str]] = deque(maxlen=max(1, size))  # flavours of runners just taken
        self._starting = 0
        self._taken_at = 0.0  # monotonic time of the last take
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self.served = 0
        self.misses = 0
        self.failures = 0
        self.ended_before_ready = 0
        self.preimport_stopped: str | None = None  # why the pool no longer pre-imports, once it gave up
        self._ended_in_a_row = 0  # runners that ended before they were ready, until one is ready
        self._over_limit_in_a_row: Counter[frozenset[str]] = Counter()  # of those at their memory limit, by pre-imports
        self._hold_until = 0.0  # monotonic time before which no runner starts (runners keep ending early)

    def start(self) -> None:
        if self.size <= 0 or self._threads:
            return
        for n in range(min(REFILL_THREADS, self.size)):
            thread = threading.Thread(target=self._refill, name=f"pool-refill-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def target(self) -> int:
        """How many idle runners to keep: none while the host is short of memory."""
        return self.size if mem_available() >= self.min_available else 0

    def take(self, script: str) -> Runner | None:
        """A live warm runner, best matched to what `script` imports, or None (the cold path)."""
        needs = self.modules & imported_modules(script)
        with self._cond:
            self._wanted.append(needs)
            self._taken_at = time.monotonic()
            for runner in list(self._idle):  # first: one that just got ready may drop the pre-imported ones
                self._ready(runner)
            while self._idle:
                # A runner still importing is slower than a ready one, but still faster than a cold start.
                candidates = [runner for runner in self._idle if runner.ready] or list(self._idle)
                index = pick([runner.preimport for runner in candidates], needs)
                assert index is not None
                runner = candidates[index]
                self._idle.remove(runner)
                self._cond.notify_all()
                if _alive(runner):
                    self.served += 1
                    return runner
                self._discard(runner)
            self.misses += 1
            self._cond.notify_all()
            return None

    def _refill(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    if len(self._idle) + self._starting >= self.target():
                        if len(self._idle) > self.target():
                            self._discard(self._idle.pop())  # shrink: memory is short
                            continue
                        self._cond.wait(timeout=CHECK_EVERY)
                        self._drop_dead()
                        continue
                    hold = self._hold_until - time.monotonic()
                    if hold > 0:
                        self._cond.wait(timeout=min(hold, CHECK_EVERY))
                        self._drop_dead()
                        continue
                    pause = self._taken_at + REFILL_PAUSE - time.monotonic()
                    if not self._idle or pause <= 0:
                        break
                    self._cond.wait(timeout=pause)
                if self._stopping:
                    return
                self._starting += 1
                flavour = self._wanted.popleft() if self._wanted else self.modules
            try:
                runner = self.driver.prepare("pool", ",".join(sorted(flavour)), flavour)
            except Exception as exc:
                with self._cond:
                    self._starting -= 1
                    self.failures += 1
                log.warning("warm runner could not start: %s", exc)
                time.sleep(RETRY_AFTER_FAILURE)
                continue
            with self._cond:
                self._starting -= 1
                if self._stopping:
                    self._discard(runner)
                    return
                if not runner.preimport <= self.modules:  # it was starting when its pre-imports were dropped
                    self._discard(runner)
                    continue
                self._idle.append(runner)
                self._cond.notify_all()

    def wait_ready(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._idle) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def idle_count(self) -> int:
        with self._cond:
            return len(self._idle)

    def _drop_dead(self) -> None:
        """Idle runners whose container ended before it was ready: replace them, more slowly each time in a row."""
        for runner in list(self._idle):
            if self._ready(runner) or not runner.gone:
                continue
            log.warning("warm runner %s ended before it was ready; replacing it", runner.container[:12])
            self._idle.remove(runner)
            self._discard(runner, ended_early=True)
            self.ended_before_ready += 1
            self._ended_in_a_row += 1
            hold = min(MAX_HOLD, RETRY_AFTER_FAILURE * 2 ** (self._ended_in_a_row - 1))
            self._hold_until = max(self._hold_until, time.monotonic() + hold)

    def _ready(self, runner: Runner) -> bool:
        """runner.check_ready(), under the lock. A runner that just got ready ends the streak of runners ending
        early, or, if a pre-import ran out of memory (the rlimit fallback, where nothing ends it), counts as one
        at its limit."""
        if runner.ready:
            return True
        if not runner.check_ready():
            return False
        self._ended_in_a_row = 0
        self._count_over_limit(runner.preimport, runner.preimport_short_of_memory)
        return True

    def _discard(self, runner: Runner, ended_early: bool = False) -> None:
        runner.stream.close()
        threading.Thread(target=self._remove, args=(runner, ended_early), daemon=True).start()

    def _remove(self, runner: Runner, ended_early: bool) -> None:
        """Off the pool's lock: asking Podman why a runner ended may take a while."""
        if ended_early and runner.preimport:
            try:
                over_limit = self.driver.oom_killed(runner.container)  # before cleanup, which forgets it
            except Exception:
                over_limit = False
            with self._cond:
                self._count_over_limit(runner.preimport, over_limit)
        self.driver.cleanup(runner.container)

    def _count_over_limit(self, modules: frozenset[str], over_limit: bool) -> None:
        """Pre-imports that keep ending runners at their memory limit are dropped: better bare runners than a
        pool that never has one ready."""
        if not over_limit or not self.modules:
            self._over_limit_in_a_row.pop(modules, None)
            return
        self._over_limit_in_a_row[modules] += 1
        in_a_row = self._over_limit_in_a_row[modules]
        if in_a_row < OVER_LIMIT_IN_A_ROW:
            return
        self.preimport_stopped = (f"{in_a_row} runners in a row met their memory limit while pre-importing "
                                  f"{','.join(sorted(modules))} (PYTHON_RUNNER_CONTAINER_MEMORY too small for "
                                  "PYTHON_SANDBOX_PREIMPORT?)")
        log.warning("warm pool: %s; its runners no longer pre-import anything", self.preimport_stopped)
        self.modules = frozenset()
        self._wanted.clear()
        self._over_limit_in_a_row.clear()
        self._ended_in_a_row = 0
        self._hold_until = 0.0
        # Idle ones still importing, or short of memory, go; ready ones whose imports fit stay. (check_ready, not
        # _ready: with the pre-imports dropped there is nothing left to count.)
        for runner in [r for r in self._idle if r.preimport and (not r.check_ready() or r.preimport_short_of_memory)]:
            self._idle.remove(runner)
            self._discard(runner)
        self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            idle = list(self._idle)
            self._idle.clear()
            self._cond.notify_all()
        for runner in idle:
            runner.stream.close()
            self.driver.cleanup(runner.container)
        for thread in self._threads:
            thread.join(timeout=30)

    def health(self, rss: bool = True) -> dict[str, Any]:
        """The pool's state; `rss` asks Podman for each idle runner's pid (kept off the request path)."""
        with self._cond:
            idle = list(self._idle)
            ready = sum(self._ready(runner) for runner in idle)
            starting = self._starting
        return {
            "size": self.size,
            "target": self.target(),
            "idle": len(idle),
            "ready": ready,
            "starting": starting,
            "preimport": self.preimport,
            "idle_runner_preimports": [",".join(sorted(r.preimport)) for r in idle],
            **({"idle_runner_rss_bytes": self.idle_rss(idle)} if rss else {}),
            "memory_available_bytes": mem_available(),
            "served": self.served,
            "misses": self.misses,
            "failures": self.failures,
            "ended_before_ready": self.ended_before_ready,
            "preimport_stopped": self.preimport_stopped,
        }

    def idle_rss(self, idle: list[Runner] | None = None) -> list[int | None]:
        if idle is None:
            with self._cond:
                idle = list(self._idle)
        return [self._rss(runner) for runner in idle]

    def _rss(self, runner: Runner) -> int | None:
        try:
            pid = self.driver.api.inspect(runner.container)["State"]["Pid"]
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except Exception:
            return None
        return None


def _alive(runner: Runner) -> bool:
    """An idle runner's attach stream shows EOF if its container died while waiting."""
    sock = runner.stream.sock
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return True
    try:
        import socket as _socket

        peeked = sock.recv(1, _socket.MSG_PEEK)
    except OSError:
        return False
    return bool(peeked)
