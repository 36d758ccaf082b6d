"""The faults, one at a time, each at one seam of the pipeline, and the run of one fault under load.

A fault has up to three steps: `prepare` (before the runs are submitted: a misconfiguration), `inject`
(once a share of the runs is under way: a crash or an outage) and `heal` (after `hold` seconds). Then every
run gets the settle time to end, the sandbox is stopped gracefully to count the runner containers left
behind, and started again for the next fault.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.chaos.harness import Chaos
from tests.chaos.load import Load, Row
from tests.support.harness import answers, wait_until

Step = Callable[[Chaos, float], None]


def _nothing(chaos: Chaos, hold: float) -> None:
    pass


@dataclass(frozen=True)
class Fault:
    name: str
    seam: str
    hold: float  # seconds between inject and heal (full form)
    quick_hold: float
    prepare: Step = _nothing
    inject: Step = _nothing
    heal: Step = _nothing
    big_output: bool = False


def _wrong_callback_url(chaos: Chaos, hold: float) -> None:
    """Callbacks answered by something that is not the scheduler's callback route (a wrong path or proxy).

    Since issue 20 a sandbox holds no callback token to get wrong (each run brings its own secret); what an
    operator can still get wrong is where the callbacks go."""
    chaos.restart_sandbox(scheduler_url=chaos.scheduler_url + "/not-the-scheduler")


def _right_callback_url(chaos: Chaos, hold: float) -> None:
    time.sleep(hold)
    chaos.restart_sandbox()


def _kill_dispatcher(chaos: Chaos, hold: float) -> None:
    chaos.kill_dispatcher()
    time.sleep(hold)
    chaos.start_dispatcher()


def _kill_sandbox(chaos: Chaos, hold: float) -> None:
    chaos.stop_sandbox(signal.SIGKILL)
    time.sleep(hold)
    chaos.start_sandbox()


def _kill_scheduler_workers(chaos: Chaos, hold: float) -> None:
    for _ in range(3):
        chaos.kill_scheduler_worker()
        time.sleep(max(hold, 1.0))
    wait_until(lambda: answers(chaos.scheduler_url + "/ping/"), 60, "a new scheduler worker")


def _kill_podman(chaos: Chaos, hold: float) -> None:
    chaos.kill_podman_service()
    time.sleep(hold)
    chaos.start_podman_service()


def _restart_mariadb(chaos: Chaos, hold: float) -> None:
    chaos.restart_mariadb(hold)


def _scheduler_away(chaos: Chaos, hold: float) -> None:
    chaos.stop_scheduler()
    time.sleep(hold)
    chaos.start_scheduler()


def _resets_on(chaos: Chaos, hold: float) -> None:
    assert chaos.proxy is not None
    chaos.proxy.resetting = True


def _resets_off(chaos: Chaos, hold: float) -> None:
    assert chaos.proxy is not None
    time.sleep(hold)
    chaos.proxy.resetting = False


FAULTS = (
    Fault("wrong callback URL, then fixed", "callbacks", 120, 20, prepare=_wrong_callback_url,
          heal=_right_callback_url),
    Fault("SIGKILL of the dispatcher", "dispatcher", 3, 3, inject=_kill_dispatcher),
    Fault("SIGKILL of the sandbox", "sandbox", 3, 3, inject=_kill_sandbox),
    Fault("SIGKILL of a scheduler worker (x3)", "scheduler API", 2, 1, inject=_kill_scheduler_workers),
    Fault("Podman API service killed, restarted", "Podman", 5, 5, inject=_kill_podman),
    Fault("MariaDB restarted", "database", 3, 3, inject=_restart_mariadb),
    Fault("scheduler unreachable", "callbacks", 120, 15, inject=_scheduler_away),
    Fault("connection resets on hand-off", "hand-off", 30, 10, prepare=_resets_on, heal=_resets_off),
    Fault("result over the body limit", "result size", 0, 0, big_output=True),
)
QUICK = ("wrong callback URL, then fixed", "SIGKILL of the sandbox", "MariaDB restarted",
         "connection resets on hand-off", "result over the body limit")


@dataclass(frozen=True)
class Plan:
    """How hard to push: runs per fault, how long a fault holds, how long runs may take to end."""

    runs: int
    quick: bool
    big_emoji: int
    settle_secs: float = 300.0
    script_sleep: float = 1.0


def run_fault(chaos: Chaos, fault: Fault, plan: Plan, org_id: int) -> Row:
    hold = fault.quick_hold if plan.quick else fault.hold
    if not chaos.sandbox_running():
        chaos.start_sandbox()  # stopped after the previous fault to count what it left
    problems = chaos.healthy()
    if problems:
        raise RuntimeError(f"the pipeline is not healthy before '{fault.name}': {problems}")
    started = time.monotonic()
    load = Load(chaos, fault.name, org_id)
    load.prepare(plan.big_emoji)
    fault.prepare(chaos, hold)
    load.submit(plan.runs, big_every=2 if fault.big_output else 0, sleep=plan.script_sleep)
    load.wait_under_way(0.3, timeout=120)
    fault.inject(chaos, hold)
    fault.heal(chaos, hold)
    load.wait_finished(plan.settle_secs)
    chaos.stop_sandbox()  # graceful: in-flight runs end, warm runners are removed; what remains was left
    left = len(chaos.containers())
    return load.tally(left, time.monotonic() - started)  # the next fault starts the sandbox again
