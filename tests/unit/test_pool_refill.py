"""When the warm pool refills (pure logic: a stand-in driver instead of Podman)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from sandbox import pool as pool_module
from sandbox.driver import Runner
from sandbox.pool import WarmPool


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
