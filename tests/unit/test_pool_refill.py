"""When the warm pool refills (pure logic: a stand-in driver instead of Podman)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sandbox import pool as pool_module
from sandbox.driver import Runner
from sandbox.outcome import READY
from sandbox.pool import WarmPool
from tests.support.entrypoint import checkout_entrypoint


@dataclass
class StandInStream:
    """An attach stream that stays open (the runner waits for its job)."""

    pair: tuple[socket.socket, socket.socket] = field(default_factory=socket.socketpair)
    eof: bool = False

    @property
    def sock(self) -> socket.socket:
        return self.pair[0]

    def drain(self) -> list[Any]:
        return []

    def close(self) -> None:
        for end in self.pair:
            end.close()


@dataclass
class ChattyStream(StandInStream):
    """An attach stream whose entrypoint says `said`, then that it waits for its job, as a real one does once
    (once `speak` is set, when given: the test decides when the runner has finished its pre-imports)."""

    said: bytes = b""
    told: bool = False
    speak: threading.Event | None = None

    def drain(self) -> list[Any]:
        if self.told or (self.speak is not None and not self.speak.is_set()):
            return []
        self.told = True
        return [(2, self.said), (2, READY)]


@dataclass
class StandInDriver:
    prepared: list[float] = field(default_factory=list)  # monotonic time of each runner started

    def prepare(self, label: str, preimport: str = "", modules: frozenset[str] = frozenset()) -> Runner:
        self.prepared.append(time.monotonic())
        return Runner(f"runner-{len(self.prepared)}", StandInStream(), preimport=modules, ready=True)  # type: ignore[arg-type]

    def cleanup(self, container: str) -> bool:
        return True


def within(seconds: float, done: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def warm(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(pool_module, "REFILL_PAUSE", 2.0)  # long enough to tell "waits" from "at once"
    driver = StandInDriver()
    pool = WarmPool(driver, size=2, min_available=0)  # type: ignore[arg-type]
    pool.start()
    assert pool.wait_ready(2, 5)
    yield pool, driver
    pool.stop()


def test_a_take_that_leaves_a_runner_idle_refills_after_the_pause(warm: Any) -> None:
    pool, driver = warm
    before = len(driver.prepared)
    taken = time.monotonic()
    assert pool.take("print(1)") is not None
    time.sleep(1.0)
    assert len(driver.prepared) == before, "refilled while the run that took a runner was starting"
    assert within(3.0, lambda: len(driver.prepared) == before + 1)
    assert driver.prepared[-1] - taken >= 2.0
    assert pool.wait_ready(2, 5)


def test_an_empty_pool_is_refilled_at_once(warm: Any) -> None:
    pool, driver = warm
    before = len(driver.prepared)
    assert pool.take("print(1)") is not None and pool.take("print(2)") is not None
    emptied = time.monotonic()
    assert within(1.0, lambda: len(driver.prepared) >= before + 1), "an empty pool waited"
    assert driver.prepared[before] - emptied < 1.0
    assert pool.wait_ready(2, 5)


@dataclass
class EndingDriver(StandInDriver):
    """Runners with pre-imports in `ends` end before they are ready, at their memory limit if `over_limit`.

    A runner is made only once each earlier one that ended is cleaned up (after the pool counted why it ended), as
    Podman answers well within a real pool's refill pause: the outcomes reach the pool in the order of the runners."""

    ends: Callable[[frozenset[str]], bool] = lambda modules: True
    over_limit: bool = True
    flavours: list[frozenset[str]] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)
    ended: set[str] = field(default_factory=set)
    cleaned: set[str] = field(default_factory=set)

    def prepare(self, label: str, preimport: str = "", modules: frozenset[str] = frozenset()) -> Runner:
        self.flavours.append(modules)  # what the pool asked for, when it asked
        assert within(5, lambda: self.ended <= self.cleaned), "a runner that ended was never cleaned up"
        self.prepared.append(time.monotonic())
        name = f"runner-{len(self.prepared)}"
        if self.ends(modules):
            self.ended.add(name)
            return Runner(name, StandInStream(eof=True), preimport=modules)  # type: ignore[arg-type]
        return Runner(name, ChattyStream(), preimport=modules)  # type: ignore[arg-type]

    def cleanup(self, container: str) -> bool:
        self.cleaned.add(container)
        return True

    def oom_killed(self, container: str) -> bool:
        self.asked.append(container)
        return self.over_limit


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "CHECK_EVERY", 0.02)
    monkeypatch.setattr(pool_module, "RETRY_AFTER_FAILURE", 0.05)


def test_pre_imports_that_take_runners_to_their_memory_limit_are_dropped(quick: None) -> None:
    driver = EndingDriver(ends=lambda modules: "pandas" in modules)
    pool = WarmPool(driver, size=2, preimport="seatable_api,pandas", min_available=0)  # type: ignore[arg-type]
    pool.start()
    try:
        assert within(10, lambda: pool.health(rss=False)["preimport_stopped"] is not None)
        assert within(5, lambda: pool.idle_count() == 2 and all(r.ready for r in list(pool._idle)))
        health = pool.health(rss=False)
        assert "pandas,seatable_api" in health["preimport_stopped"]
        assert "PYTHON_RUNNER_CONTAINER_MEMORY" in health["preimport_stopped"]
        assert health["ended_before_ready"] >= 3
        assert health["idle_runner_preimports"] == ["", ""]
        dropped_at = next(i for i, flavour in enumerate(driver.flavours) if not flavour)
        assert all(driver.flavours[:dropped_at]) and not any(driver.flavours[dropped_at:])
        runner = pool.take("import pandas\nprint(pandas.__name__)\n")
        assert runner is not None and runner.preimport == frozenset()
        assert within(5, lambda: pool.idle_count() == 2)
        assert not any(driver.flavours[dropped_at:]), "a runner made after a take pre-imported again"
    finally:
        pool.stop()


def test_a_runner_asked_for_before_the_pre_imports_were_dropped_is_replaced(quick: None) -> None:
    """Three runners end at their limit; the fourth, asked for with pandas before the third was counted, starts
    after the pool dropped its pre-imports and would live on with them: it is replaced by a bare one."""
    outcomes = iter([True, True, True] + [False] * 100)
    fourth_asked_for = threading.Event()

    @dataclass
    class LateDriver(EndingDriver):
        pool: WarmPool | None = None

        def prepare(self, label: str, preimport: str = "", modules: frozenset[str] = frozenset()) -> Runner:
            if len(self.flavours) == 3:
                fourth_asked_for.set()
                assert within(5, lambda: self.pool is not None and self.pool.preimport_stopped is not None)
            return super().prepare(label, preimport, modules)

        def oom_killed(self, container: str) -> bool:
            if container == "runner-3":
                assert fourth_asked_for.wait(5)
            return super().oom_killed(container)

    driver = LateDriver(ends=lambda modules: next(outcomes))
    pool = driver.pool = WarmPool(driver, size=1, preimport="pandas", min_available=0)  # type: ignore[arg-type]
    pool.start()
    try:
        assert within(5, lambda: len(driver.prepared) >= 5 and pool.idle_count() == 1)
        assert driver.flavours[:4] == [frozenset({"pandas"})] * 4 and driver.flavours[4] == frozenset()
        assert pool.health(rss=False)["idle_runner_preimports"] == [""]
        assert "runner-4" in driver.cleaned
    finally:
        pool.stop()


def test_runners_ending_early_for_another_reason_drop_nothing_and_are_replaced_ever_more_slowly(quick: None) -> None:
    driver = EndingDriver(over_limit=False)  # e.g. Podman restarted: the streams end, no memory limit was met
    pool = WarmPool(driver, size=2, preimport="pandas", min_available=0)  # type: ignore[arg-type]
    pool.start()
    try:
        time.sleep(2.0)
        health = pool.health(rss=False)
        assert health["preimport_stopped"] is None and all(driver.flavours)
        assert driver.asked, "the pool did not ask why its runners ended"
        # Holds of 0.05, 0.1, 0.2, 0.4, 0.8 s in a row: about eight starts in 2 s, where an unheld pool
        # would start hundreds.
        assert 3 <= len(driver.prepared) <= 12, driver.prepared
        gaps = [b - a for a, b in zip(driver.prepared[2:], driver.prepared[3:], strict=False)]
        assert max(gaps) >= 0.4, gaps
    finally:
        pool.stop()


def test_a_ready_runner_ends_the_streak(quick: None) -> None:
    """Two runners at their limit, then a ready one of the same pre-imports: the count starts again."""
    outcomes = iter([True, True, False, True, True, False] + [False] * 100)
    driver = EndingDriver(ends=lambda modules: next(outcomes))
    pool = WarmPool(driver, size=1, preimport="pandas", min_available=0)  # type: ignore[arg-type]
    pool.start()
    try:
        assert within(5, lambda: len(driver.prepared) >= 3 and pool.idle_count() == 1)
        assert pool.take("import pandas") is not None
        assert within(5, lambda: len(driver.prepared) >= 6 and pool.idle_count() == 1)
        time.sleep(0.2)
        assert pool.health(rss=False)["preimport_stopped"] is None
        assert all(driver.flavours)
    finally:
        pool.stop()


def memory_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> bytes:
    """What this checkout's entrypoint says when a pre-import raises MemoryError."""
    (tmp_path / "hungry_module.py").write_text("raise MemoryError\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    checkout_entrypoint().preimport("hungry_module")
    return capsys.readouterr().err.encode()


def test_pre_imports_short_of_memory_in_runners_that_live_on_are_dropped_too(
        quick: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The rlimit fallback: a pre-import over the limit raises MemoryError in a runner that lives on."""
    short_of_memory = memory_error_line(tmp_path, monkeypatch, capsys)

    @dataclass
    class ShortDriver(StandInDriver):
        flavours: list[frozenset[str]] = field(default_factory=list)
        # One per pandas runner: set, it says its pre-import failed and that it is ready. Until then the pool
        # sees a runner still importing, so the test, not the pool's timing, decides how many have said it.
        speak: list[threading.Event] = field(default_factory=list)

        def prepare(self, label: str, preimport: str = "", modules: frozenset[str] = frozenset()) -> Runner:
            self.prepared.append(time.monotonic())
            self.flavours.append(modules)
            if "pandas" in modules:
                self.speak.append(threading.Event())
                stream = ChattyStream(said=short_of_memory, speak=self.speak[-1])
            else:
                stream = ChattyStream(said=b"ok\n")
            return Runner(f"runner-{len(self.prepared)}", stream, preimport=modules)  # type: ignore[arg-type]

    driver = ShortDriver()
    pool = WarmPool(driver, size=1, preimport="pandas", min_available=0)  # type: ignore[arg-type]
    pool.start()

    def pandas_runner_idle(count: int) -> Callable[[], bool]:
        return lambda: len(driver.speak) == count and pool.idle_count() == 1

    try:
        for n in range(2):  # two ready runners short of memory: counted, nothing dropped yet
            assert within(5, pandas_runner_idle(n + 1))
            driver.speak[n].set()
            assert pool.take("import pandas") is not None  # its replacement pre-imports pandas again
        assert within(5, pandas_runner_idle(3))
        time.sleep(0.2)  # the third still importing: the pool's refill loop looks at it and counts nothing
        assert pool.health(rss=False)["preimport_stopped"] is None
        driver.speak[2].set()
        assert within(5, lambda: pool.health(rss=False)["preimport_stopped"] is not None)
        assert "pandas" in pool.health(rss=False)["preimport_stopped"]
        assert within(5, lambda: pool.idle_count() == 1 and driver.flavours[-1] == frozenset())
        assert driver.flavours[:3] == [frozenset({"pandas"})] * 3
    finally:
        pool.stop()
