"""Per-run callback secrets and the rules a callback must pass before it changes a run.

The dispatcher issues each run a fresh secret at hand-off and stores only its SHA-256 (the hand-off mark is
committed before the POST, so the hash is there before any callback can be). The secret goes to the one node
the run is handed to; the callbacks present it as `Authorization: Token <secret>`. So a callback is accepted
only from that node, only for the run's next legal transition, and the secret is dead once the run finished:

  running   once, from `pending` after the hand-off
  result    once, from `running`, or from `pending` after the hand-off (a run the node could not start)

Times are checked against the run's own history and the scheduler's clock: a start before the run was created
or in the future, or a duration longer than the time since that start, is not believed (stored as a problem of
the result, as any malformed field). A refusal is deliberate and final: 403/409 with {"refused": why}, which the
sandbox's outbox takes as the answer (acknowledged with an error, nothing re-run, nothing lost).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from scheduler import outcomes, texts
from scheduler.clock import Clock
from scheduler.lifecycle import FINISHED, PENDING, RUNNING, AdmitResult, AdmitStart, RunResult, as_datetime

CLOCK_SKEW = timedelta(seconds=120)  # sandbox and scheduler clocks may differ by this much
DURATION_SLACK = 5.0  # seconds a reported duration may exceed the time since the reported start


def issue() -> tuple[str, str]:
    """A new secret for one run and the digest the database keeps."""
    secret = secrets.token_urlsafe(32)
    return secret, digest(secret)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


class Refused(Exception):
    """The callback may not change this run; `reason` goes into the JSON answer as "refused"."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Credential:
    """What a callback presented, and whether callbacks without a secret are allowed (the compatibility switch)."""

    secret: str | None
    unauthenticated_allowed: bool = False

    def check(self, stored_digest: str | None) -> None:
        if self.secret is None and self.unauthenticated_allowed:
            return
        if self.secret is None or not stored_digest:
            raise Refused(403, "secret", texts.CALLBACK_SECRET_MISSING)
        if not hmac.compare_digest(digest(self.secret), stored_digest):
            raise Refused(403, "secret", texts.CALLBACK_SECRET_WRONG)

    def running_allowed(self, row: Any) -> None:
        """`row`: state, dispatched_at, callback_secret_hash of the run (locked by the caller)."""
        self.check(row.callback_secret_hash)
        if row.state == FINISHED:
            raise Refused(409, "finished", texts.CALLBACK_RUN_FINISHED)
        if row.state == RUNNING:
            raise Refused(409, "replay", texts.CALLBACK_ALREADY_RUNNING)
        if row.state != PENDING or row.dispatched_at is None:
            raise Refused(409, "not-handed-off", texts.CALLBACK_NOT_HANDED_OFF)

    def result_allowed(self, row: Any) -> None:
        self.check(row.callback_secret_hash)
        if row.state == FINISHED:
            raise Refused(409, "finished", texts.CALLBACK_RUN_FINISHED)
        if row.state == PENDING and row.dispatched_at is None:
            raise Refused(409, "not-handed-off", texts.CALLBACK_NOT_HANDED_OFF)
        if row.state not in (PENDING, RUNNING):
            raise Refused(409, "not-handed-off", texts.CALLBACK_NOT_HANDED_OFF)


def start_problem(started_at: datetime | None, created_at: datetime | None, now: datetime) -> str | None:
    """Why a reported start cannot be true, or None."""
    if started_at is None:
        return None
    if started_at > now + CLOCK_SKEW:
        return texts.STARTED_IN_FUTURE
    if created_at is not None and started_at < created_at - CLOCK_SKEW:
        return texts.STARTED_BEFORE_CREATED
    return None


def duration_problem(spend_time: float | None, started_at: datetime | None, now: datetime) -> str | None:
    """Why a reported duration cannot be true (longer than the time since the start), or None."""
    if spend_time is None or started_at is None:
        return None
    elapsed = (now - started_at).total_seconds() + CLOCK_SKEW.total_seconds()
    if spend_time > max(0.0, elapsed) + DURATION_SLACK:
        return texts.DURATION_TOO_LONG
    return None


def believable(result: RunResult, row: Any, now: datetime) -> RunResult:
    """The result with the times the scheduler cannot believe taken out, as malformed fields are."""
    started = result.started_at or as_datetime(row.started_at)
    problems = [start_problem(result.started_at, as_datetime(row.created_at), now)]
    if problems[0] is not None:
        started = as_datetime(row.started_at)
    # Without any start, the run cannot have taken longer than it has existed.
    problems.append(duration_problem(result.spend_time, started or as_datetime(row.created_at), now))
    wrong = [p for p in problems if p is not None]
    if not wrong:
        return result
    notice = texts.RESULT_MALFORMED.format(problems="; ".join(wrong))
    return replace(
        result,
        success=False,
        output=f"{result.output}\n{notice}" if result.output else notice,
        started_at=None if problems[0] is not None else result.started_at,
        spend_time=None if problems[1] is not None else result.spend_time,
        outcome=None if result.outcome == outcomes.SUCCESS else result.outcome,  # not believed: failed
    )


def admit_start(credential: Credential, clock: Clock) -> AdmitStart:
    """The running callback's check for lifecycle.start: its secret and its transition, or Refused; a start the
    scheduler cannot believe is replaced by the arrival time."""

    def admit(row: Any, started: datetime) -> datetime:
        credential.running_allowed(row)
        now = clock.now()
        return now if start_problem(started, as_datetime(row.created_at), now) is not None else started

    return admit


def admit_result(credential: Credential, clock: Clock) -> AdmitResult:
    """The result callback's check for lifecycle.finish: its secret and its transition, or Refused; reported
    times the scheduler cannot believe are not stored."""

    def admit(row: Any, result: RunResult) -> RunResult:
        credential.result_allowed(row)
        return believable(result, row, clock.now())

    return admit
