"""`seatable-scheduler dispatch`: claim pending runs by fair share and hand them to sandbox nodes.

One loop per process; several processes may run against one database. A batch goes through:
claim (one transaction) -> rate limit -> task/file from SeaTable, in parallel -> pick ready nodes ->
mark "handing off" (one transaction, committed before any POST) -> download the script (its content goes
with the run; bounded, so the hand-off stays inside its window) and POST, in parallel, each retried at once
on its node after a reset or timeout (nodes.py) -> release what provably never arrived (the next batch may
give it to another node), end what was refused. Only a hand-off whose retries all stayed uncertain is left
to the sweeper. SIGTERM stops claiming; the batch in hand is finished
(hand-offs complete, unprepared claims released) and the process exits 0.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from observability import logs
from scheduler import callback_auth, counters, fairshare, lifecycle, outcomes, queries, queue, texts
from scheduler.config import Config
from scheduler.db import Store
from scheduler.fairshare import Team
from scheduler.nodes import Nodes, Sent
from scheduler.queue import ClaimedRun
from scheduler.seatable import FetchFailed, ScriptNotFound, SeaTable
from scheduler.wakeup import WakeListener, wake_dir

log = logging.getLogger(__name__)

IDLE_POLL = 0.2  # seconds between looks at an empty queue when no wake-up arrives (wakeup.py)
DOWNLOAD_PAUSE = 60.0  # after the file server refused the dispatcher's connect, the sandboxes download for this long
FETCH_ATTEMPTS = 3  # a run whose task/file fetch fails this often ends with the failure (no endless retry)
FETCH_RETRY_SECS = 2.0  # times the attempt: 2 s, then 4 s
RETRY = "retry"


@dataclass
class BatchReport:
    claimed: int = 0
    handed_off: int = 0
    released: int = 0
    ended: int = 0
    uncertain: int = 0


def _context(raw: str | None) -> Any:
    """The hand-off's context_data: an object, a string or null (pipeline_contract.schemas.HANDOFF).

    Any other JSON value SeaTable sent (a list, a number) goes as its JSON text, the very text the sandbox
    writes to the script's stdin for it; sent as it is, the sandbox would refuse the run."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if value is None or isinstance(value, (dict, str)) else raw


class Dispatcher:
    """The claim loop of one process; `stop()` (SIGTERM) ends it after the batch in hand."""

    def __init__(
        self,
        config: Config,
        store: Store,
        seatable: SeaTable,
        nodes: Nodes,
        me: str | None = None,
        pause: Callable[[str, list[int]], None] | None = None,
        wake: WakeListener | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.seatable = seatable
        self.nodes = nodes
        self.me = me or queue.dispatcher_id()
        self.claims = queue.Claim(
            store,
            self.me,
            config.lease_secs,
            config.window_secs,
            config.total_thread_count,
            config.rate_limit_percent,
        )
        self.pause = pause or (lambda point, ids: None)
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=config.dispatch_threads, thread_name_prefix="handoff")
        self.totals = BatchReport()
        self.wake = wake  # made by run(): a dispatcher driven step by step (tests) binds no socket
        self._downloads_from = 0.0  # monotonic time from which the dispatcher downloads scripts again

    def stop(self) -> None:
        self.stopping.set()
        if self.wake is not None:
            self.wake.interrupt()

    def _sleep(self, seconds: float) -> bool:
        """Wait for a wake-up (a run created or ended), a stop, or `seconds`; True when woken."""
        if self.wake is None:
            self.stopping.wait(seconds)
            return False
        if self.stopping.is_set():
            return False
        return self.wake.wait(seconds)

    def run(self) -> None:
        if self.wake is None:
            self.wake = WakeListener(wake_dir(self.config))
        log.info("dispatcher %s started, nodes: %s; %s", self.me, ", ".join(self.nodes.nodes),
                 f"woken through {self.wake.path.parent}" if self.wake.path else "polling only")
        while not self.stopping.is_set():
            try:
                worked = self.step()
            except Exception:  # the database or a node misbehaving must not end the loop
                log.exception("dispatch step failed")
                worked = False
            if not worked:
                self._sleep(IDLE_POLL * random.uniform(0.75, 1.25))
        self.pool.shutdown(wait=True)
        self.wake.close()
        log.info(
            "dispatcher %s stopped: %d claimed, %d handed off, %d released, %d ended",
            self.me,
            self.totals.claimed,
            self.totals.handed_off,
            self.totals.released,
            self.totals.ended,
        )

    def step(self) -> bool:
        """One batch; False when there was nothing to do (the caller waits a little)."""
        self.nodes.refresh()
        capacity = min(self.nodes.capacity(), self.config.dispatch_batch)
        if capacity <= 0:
            if self._sleep(min(max(self.nodes.next_ready_in(), 0.05), IDLE_POLL)):
                self.nodes.recheck()  # a run ended (or was created): its node may have a free slot now
            return True
        claimed = self.claims.claim(capacity)
        if not claimed:
            return False
        self.pause("after-claim", [c.id for c in claimed])
        report = self.dispatch(claimed)
        for name in ("claimed", "handed_off", "released", "ended", "uncertain"):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(report, name))
        return True

    def dispatch(self, claimed: list[ClaimedRun]) -> BatchReport:
        report = BatchReport(claimed=len(claimed))
        limited = [c for c in claimed if c.rate_limited]
        if limited:
            self._end_rate_limited(limited)
            report.ended += len(limited)
        todo = [c for c in claimed if not c.rate_limited]
        prepared: dict[int, dict[str, Any]] = {}
        retry: dict[int, list[int]] = {}
        for run, body in zip(todo, self.pool.map(self._prepare, todo), strict=True):
            if body is None:
                report.ended += 1
            elif body == RETRY:
                retry.setdefault(run.attempt, []).append(run.id)
            else:
                assert isinstance(body, dict)
                prepared[run.id] = body
        for attempt, ids in retry.items():
            report.released += lifecycle.release(self.store, self.me, ids, delay=FETCH_RETRY_SECS * attempt)
        if self.stopping.is_set():
            report.released += lifecycle.release(self.store, self.me, list(prepared))
            return report
        assignments: dict[int, str] = {}
        for run_id in prepared:
            node = self.nodes.take()
            if node is None:
                break
            assignments[run_id] = node
        unassigned = [run_id for run_id in prepared if run_id not in assignments]
        report.released += lifecycle.release(self.store, self.me, unassigned)
        if not assignments:
            return report
        deadline = self.store.clock.now() + timedelta(seconds=self.config.process_timeout + self.config.lost_grace_secs)
        # Each hand-off carries a secret of its own for the run's callbacks; the database keeps its digest only.
        issued = {run_id: callback_auth.issue() for run_id in assignments}
        digests = {run_id: digest for run_id, (_, digest) in issued.items()}
        ours = lifecycle.hand_off(self.store, self.me, assignments, deadline, digests)
        for run_id in ours:
            prepared[run_id]["callback_secret"] = issued[run_id][0]
        lost = set(assignments) - ours
        if lost:
            log.warning("lease lost before hand-off for runs %s", sorted(lost))
            counters.add(self.store, {(counters.HANDOFF_ERROR, "lease_lost"): len(lost)})
        sends = [(run_id, assignments[run_id]) for run_id in assignments if run_id in ours]
        by_id = {c.id: c for c in todo}
        # The script is downloaded here, after the claim's lease became the hand-off deadline: the batch's
        # preparation under the lease stays one SeaTable request per run.
        answers = list(self.pool.map(
            lambda s: self.nodes.post(s[1], self._with_script(by_id[s[0]], prepared[s[0]])), sends))
        self._settle(sends, answers, by_id, report)
        self.pause("after-handoff", [run_id for run_id, _ in sends])
        return report

    def _settle(
        self, sends: list[tuple[int, str]], answers: list[Any], by_id: dict[int, ClaimedRun], report: BatchReport
    ) -> None:
        accepted_drafts: list[int] = []
        unsent: dict[str, list[int]] = {}
        tally: dict[tuple[str, str], int] = {}
        for (run_id, node), outcome in zip(sends, answers, strict=True):
            accepted = outcome.sent is Sent.ACCEPTED
            key = (counters.HANDED_OFF, "") if accepted else (counters.HANDOFF_ERROR, _cause(outcome))
            tally[key] = tally.get(key, 0) + 1
            run = by_id[run_id]
            logs.for_run(log, run_id, run.script_name, run.dtable_uuid, node).info(
                "hand-off: %s%s", outcome.sent.value, f" ({outcome.reason})" if outcome.reason else ""
            )
            if outcome.sent is Sent.ACCEPTED:
                report.handed_off += 1
                if by_id[run_id].is_draft:
                    accepted_drafts.append(run_id)
            elif outcome.sent is Sent.NOT_SENT:
                unsent.setdefault(node, []).append(run_id)
            elif outcome.sent is Sent.REJECTED:
                lifecycle.fail(
                    self.store, run_id, texts.SANDBOX_REJECTED.format(reason=outcome.reason),
                    outcome=outcomes.SANDBOX_ERROR,
                )
                report.ended += 1
            else:
                report.uncertain += 1  # the sweeper asks the node once no POST can still be on its way
        lifecycle.erase_drafts(self.store, accepted_drafts)
        for node, ids in unsent.items():
            report.released += lifecycle.requeue(self.store, ids, node)
        counters.add(self.store, tally)

    def _prepare(self, run: ClaimedRun) -> dict[str, Any] | str | None:
        """The POST body, with a fresh temp_api_token; None when the run was ended, RETRY to try later.

        SeaTable being briefly unreachable costs a run a few seconds, not its life; a 404 or the last
        attempt ends it with upstream's "Fail to get script".
        """
        body: dict[str, Any] = {
            "script_id": run.id,
            "dtable_uuid": run.dtable_uuid,
            "script_name": run.script_name,  # for the sandbox's log lines only
            "context_data": _context(run.context_data),
        }
        try:
            if run.is_draft:
                draft = queries.draft_payload(self.store, run.id)
                if draft is None:
                    raise FetchFailed("the draft's code is no longer stored")
                body["script_content"], token = draft
            else:
                task = self.seatable.task_file(run.dtable_uuid, run.script_name)
                body["script_url"], token = task.script_url, task.temp_api_token
        except ScriptNotFound:
            lifecycle.fail(
                self.store, run.id, texts.SCRIPT_NOT_FOUND.format(script_name=run.script_name),
                outcome=outcomes.FETCH_FAILED,
            )
            return None
        except FetchFailed as exc:
            if not run.is_draft and run.attempt < FETCH_ATTEMPTS:
                logs.for_run(log, run.id, run.script_name, run.dtable_uuid).info(
                    "task/file failed (%s), attempt %d: retrying later", exc, run.attempt
                )
                return RETRY
            lifecycle.fail(
                self.store, run.id, texts.SCRIPT_FETCH_FAILED.format(reason=exc), outcome=outcomes.FETCH_FAILED
            )
            return None
        body["env"] = {"dtable_web_url": self.config.seatable_server_url, "api_token": token}
        return body

    def _with_script(self, run: ClaimedRun, body: dict[str, Any]) -> dict[str, Any]:
        """The body with script_content when the dispatcher could download the script (one request fewer on the
        run's path, over a kept-alive connection), else with a script_url for the sandbox to download: the same
        URL when it is unspent, a fresh one when the failed download may have used it up."""
        url = body.get("script_url")
        if not url or not self.config.dispatch_fetch_script or time.monotonic() < self._downloads_from:
            return body
        download = self.seatable.download_script(url)
        if download.content is not None:
            return {**{k: v for k, v in body.items() if k != "script_url"}, "script_content": download.content}
        if not download.spent:
            log.warning("the file server refused the dispatcher's connection: sandboxes download scripts "
                        "for the next %.0f s", DOWNLOAD_PAUSE)
            self._downloads_from = time.monotonic() + DOWNLOAD_PAUSE
            return body
        try:
            return {**body, "script_url": self.seatable.task_file(run.dtable_uuid, run.script_name).script_url}
        except (FetchFailed, ScriptNotFound) as exc:  # the sandbox tries the spent URL and says it failed
            log.info("run %s: no fresh script URL (%s)", run.id, exc)
            return body

    def _end_rate_limited(self, limited: list[ClaimedRun]) -> None:
        """Upstream's answer to a team over its share: end the run, tell SeaTable once per window."""
        teams: dict[Team, None] = {}
        for run in limited:
            lifecycle.fail(self.store, run.id, texts.RATE_LIMITED, return_code=-1, outcome=outcomes.RATE_LIMITED)
            teams[run.team] = None
        for team in teams:
            if not team.is_group and self._first_notice(team):
                if not self.seatable.send_exceeded_notification(team.org_id, team.owner):
                    self._forget_notice(team)

    def _window(self) -> int:
        return fairshare.window_index(time.time(), self.config.window_secs)

    def _first_notice(self, team: Team) -> bool:
        """Record the notification; only the dispatcher whose insert lands sends it."""
        ignore = "INSERT IGNORE" if self.store.mysql else "INSERT OR IGNORE"

        def tx() -> bool:
            return bool(self.store.execute(
                f"{ignore} INTO exceeded_notification (team, window_start, created_at) VALUES ($team, $w, $now)",
                {"team": team.key, "w": self._window(), "now": self.store.clock.now()},
            ))

        return self.store.write(tx)

    def _forget_notice(self, team: Team) -> None:
        self.store.write(
            lambda: self.store.execute(
                "DELETE FROM exceeded_notification WHERE team = $team AND window_start = $w",
                {"team": team.key, "w": self._window()},
            )
        )


def _cause(answer: Any) -> str:
    """A failed hand-off's cause, as a metrics label from a fixed set."""
    if answer.sent is Sent.REJECTED:
        return "rejected"
    if answer.sent is Sent.UNCERTAIN:
        return "uncertain"
    reason = str(answer.reason).lower()
    if "busy" in reason:
        return "busy"
    if "reachable" in reason:
        return "not_reachable"
    return "refused"


def test_pause(spec: str) -> Callable[[str, list[int]], None] | None:
    """PYTHON_DISPATCH_TEST_PAUSE="after-claim:SECONDS" or "after-handoff:SECONDS" (tests only).

    Prints a marker with the run ids to stderr and sleeps, so a test can SIGKILL the process at exactly
    that point. Unset in production.
    """
    if not spec:
        return None
    point, _, seconds = spec.partition(":")
    delay = float(seconds or "60")

    def pause(at: str, ids: list[int]) -> None:
        if at == point and ids:
            print(f"TEST-PAUSE {at} {' '.join(map(str, ids))}", file=sys.stderr, flush=True)
            time.sleep(delay)

    return pause
