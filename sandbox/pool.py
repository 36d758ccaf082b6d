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
"""

from __future__ import annotations

import logging
import re
import select
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from sandbox.driver import ContainerDriver, Runner

log = logging.getLogger(__name__)
REFILL_THREADS = 2
# After a take, while other runners are still idle, the refill waits this long: the run that just started (and its
# result's way to the scheduler) gets the CPU first. An empty pool is refilled at once.
REFILL_PAUSE = 0.15
RETRY_AFTER_FAILURE = 2.0
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
            while self._idle:
                # A runner still importing is slower than a ready one, but still faster than a cold start.
                candidates = [runner for runner in self._idle if runner.check_ready()] or list(self._idle)
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
                        self._cond.wait(timeout=5.0)  # re-read the memory situation now and then
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
        """Idle runners whose container ended before it was ready (entrypoint failed): replace them."""
        for runner in [r for r in self._idle if not r.check_ready() and r.gone]:
            log.warning("warm runner %s ended before it was ready; replacing it", runner.container[:12])
            self._idle.remove(runner)
            self._discard(runner)

    def _discard(self, runner: Runner) -> None:
        runner.stream.close()
        threading.Thread(target=self.driver.cleanup, args=(runner.container,), daemon=True).start()

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
            ready = sum(runner.check_ready() for runner in idle)
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
