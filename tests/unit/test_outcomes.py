"""Outcome kinds: what the sandbox reports for each way a run ends, and what the scheduler stores."""

from __future__ import annotations

import signal

import pytest

from sandbox.driver import RunResult
from sandbox.metrics import OUTCOMES as SANDBOX_KINDS
from scheduler import outcomes


@pytest.mark.parametrize(("ended", "code", "kind"), [
    ("exited", 0, "success"),
    ("exited", 3, "failed"),
    ("timeout", -1, "time_limit"),
    ("output_limit", 137, "output_limit"),
    ("out_of_memory", 137, "out_of_memory"),
    ("signal", 128 + signal.SIGXCPU, "cpu_limit"),
    ("signal", 128 + signal.SIGTERM, "killed_by_signal"),
    ("error", None, "sandbox_error"),
    ("lost", None, "sandbox_lost"),
    ("fetch_failed", None, "fetch_failed"),
])  # fmt: skip
def test_the_sandbox_reports_its_kind(ended: str, code: int | None, kind: str) -> None:
    result = RunResult(code, "", 0.0, 0.0, ended)
    assert result.kind == kind and result.body(1)["outcome"] == kind
    assert kind in outcomes.REPORTED


def test_both_services_know_the_same_reported_kinds() -> None:
    assert set(SANDBOX_KINDS) == set(outcomes.REPORTED)


@pytest.mark.parametrize(("given", "success", "stored"), [
    ("time_limit", False, "time_limit"),
    (None, True, "success"),  # upstream's starter sends no outcome
    (None, False, "failed"),
    ("something new", False, "failed"),  # never a new label
    ("success", False, "failed"),  # contradicts success: the flag wins
    ("rate_limited", False, "failed"),  # only the scheduler decides this one
])  # fmt: skip
def test_the_scheduler_stores_a_known_kind(given: str | None, success: bool, stored: str) -> None:
    assert outcomes.reported(given, success) == stored
