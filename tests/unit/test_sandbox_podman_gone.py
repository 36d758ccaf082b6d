"""The driver's logic when the Podman service goes away: which failures mean "not there", which output is kept
when a run is read back from its log, the removal retry queue. A stub stands in for Podman's answers; the same
paths with a real Podman service killed and restarted are in tests/sandbox/test_podman_restart.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from podman.errors import APIError

from sandbox import driver as driver_module
from sandbox import texts
from sandbox.driver import ContainerDriver, Settled
from sandbox.limits import Enforcement, RunnerLimits
from sandbox.outcome import EXIT_RECORD, ControlStream
from sandbox.output import OutputCap
from sandbox.podman_api import STDERR, STDOUT, PodmanError, unreachable


def refused() -> APIError:
    """What podman-py raises when the service's socket refuses: its error, caused by the transport's."""
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as inner:
            raise requests.ConnectionError(inner) from inner
    except requests.ConnectionError as outer:
        error = APIError("http://d/v4.0.0/libpod/containers/x/wait", explanation="POST operation failed")
        error.__cause__ = outer
        return error


def exit_record(code: int) -> bytes:
    return EXIT_RECORD + json.dumps({"status": code << 8, "cpu_s": 0.1}).encode() + b"\n"


@dataclass
class GonePodman:
    """Answers like Podman about one finished container, after `down` calls that fail as if it were away."""

    log: list[tuple[int, bytes]]
    down: int = 0
    exit_code: int = 0
    removed: list[str] = field(default_factory=list)
    calls: int = 0

    def _call(self) -> None:
        self.calls += 1
        if self.down > 0:
            self.down -= 1
            raise refused()

    def running(self, container: str) -> bool:
        self._call()
        return False

    def logs(self, container: str) -> Iterator[tuple[int, bytes]]:
        self._call()
        yield from self.log

    def wait(self, container: str) -> int:
        self._call()
        return self.exit_code

    def inspect(self, container: str) -> dict[str, Any]:
        self._call()
        return {"State": {"OOMKilled": False}}

    def kill(self, container: str, signal: str = "KILL") -> None:
        self._call()

    def remove(self, container: str) -> None:
        try:
            self._call()
        except APIError as exc:
            raise PodmanError(f"remove failed: {exc.explanation}") from None
        self.removed.append(container)


def make_driver(api: GonePodman, output_limit: int = 1000) -> ContainerDriver:
    limits = RunnerLimits(memory=512 << 20, pids=256, cpus=0, timeout=30, tmpfs_size=100 << 20)
    enforcement = Enforcement(memory="rlimit", pids="rlimit", cpu="none", cgroup_version="v1")
    return ContainerDriver(api=api, image="img", limits=limits, enforcement=enforcement,  # type: ignore[arg-type]
                           node="unit", output_limit=output_limit)


def attached(output: bytes, limit: int = 1000) -> Settled:
    """What the attach delivered before it was cut: some output, no record from pid 1."""
    cap = OutputCap(limit)
    cap.feed(output)
    return Settled(None, cap, ControlStream())


@dataclass
class Clock:
    """The driver's time module: sleeping advances it, nothing waits."""

    now: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(driver_module, "time", fake)
    return fake


def test_only_a_missing_service_counts_as_unreachable() -> None:
    assert unreachable(refused())
    assert unreachable(FileNotFoundError(2, "No such file or directory"))
    assert not unreachable(PodmanError("wait failed (500)"))
    assert not unreachable(APIError("http://d/x", explanation="GET operation failed"))


def test_a_cut_attach_is_read_back_from_the_log_once_podman_returns(clock: Clock) -> None:
    api = GonePodman([(STDERR, b"\x00seatable-runner-ready\n"), (STDOUT, b"started\n"),
                      (STDOUT, b"finished ok\n"), (STDERR, exit_record(0))], down=3)
    driver = make_driver(api)
    settled = driver._settle("c1", 1060.0, False, attached(b"started\n"), timeout=60)
    assert settled.outcome is not None and settled.outcome.kind == "exited"
    assert settled.outcome.return_code == 0
    assert settled.cap.text() == "started\nfinished ok\n" and not settled.gap and settled.from_log
    assert clock.slept == [0.25, 0.5, 1.0]  # three refused calls, then Podman answered


def test_a_log_started_over_keeps_the_attach_output_and_says_what_is_missing() -> None:
    api = GonePodman([(STDOUT, b"...the tail of a flood\n"), (STDERR, exit_record(0))])
    settled = make_driver(api)._settle("c1", 1060.0, False, attached(b"the head\n"), timeout=60)
    assert settled.cap.text() == "the head\n" and settled.gap


def test_podman_away_past_the_deadline_leaves_the_run_without_an_outcome(clock: Clock) -> None:
    api = GonePodman([(STDOUT, b"late\n")], down=10**6)
    settled = make_driver(api)._settle("c1", 1005.0, False, attached(b"started\n"), timeout=60)
    assert settled.outcome is None and settled.cap.text() == "started\n"
    assert clock.now <= 1005.0 + driver_module.PODMAN_RETURN_SLACK  # it gave up by deadline + slack
    assert clock.slept[:4] == [0.25, 0.5, 1.0, 2.0] and max(clock.slept) == driver_module.RETRY_MAX  # backoff
    assert texts.PODMAN_LOST.startswith("sandbox lost: Podman unreachable")


def test_a_failed_removal_is_retried_until_it_succeeds() -> None:
    api = GonePodman([], down=2)
    driver = make_driver(api)
    assert driver.cleanup("c1") is False
    assert driver.retry_removals() == 1  # still away
    assert driver.retry_removals() == 0
    assert api.removed == ["c1"]
    assert driver.retry_removals() == 0 and api.removed == ["c1"]  # done with it


def test_the_time_limit_stands_when_podman_cannot_kill_the_runner() -> None:
    api = GonePodman([], down=1)  # the kill fails: Podman is away
    settled = make_driver(api)._settle("c1", 1000.0, True, attached(b"started\n"), timeout=60)
    assert settled.outcome is not None and settled.outcome.kind == "timeout"
    assert settled.cap.text() == "started\n"
