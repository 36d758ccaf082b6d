"""`seatable-scheduler maintain`: the sweeps that make every run end, and retention.

- Hand-off sweep: for each run handed to a node and not finished, ask the node (GET /function/runs/{id}).
  "running" or "reporting" renews the node's deadline (a result waiting for an unreachable scheduler is never
  given up; a run "running" far past any time limit is). "Never accepted" (404) once no POST can still be on
  its way (PYTHON_DISPATCH_HANDOFF_SECS) means the node never had it: a run that never reported running goes
  back to the queue; one that did ends as "sandbox lost". "done" for a run not finished here means its result
  was acknowledged but not recorded: it ends as "sandbox lost" saying so. No answer at all proves nothing: a
  node cut off from the network keeps running its runs and delivers their results when it is back, so its
  runs are waited for past their deadline (PYTHON_PROCESS_TIMEOUT + PYTHON_SANDBOX_LOST_GRACE_SECS after the
  node last vouched for them) for PYTHON_SANDBOX_UNREACHABLE_SECS more, and only then end as "sandbox lost".
  Silence never puts a run back in the queue: only the node's own "never accepted" can prove it never started.
- Stale sweep: runs reported running by a starter this scheduler did not dispatch, and runs queued longer
  than PYTHON_SCHEDULER_QUEUE_TIMEOUT, end with a text saying so.
- Retention: script_log past DELETE_LOG_DAYS and statistics past DELETE_STATISTICS_DAYS, deleted in
  primary-key ranges of PYTHON_RETENTION_BATCH rows, one short transaction each, so the API keeps answering.
Every change is a conditional write, so several maintainers (or a maintainer and the callbacks) never clash.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pony.orm import db_session

from observability import logs
from scheduler import outcomes, queue, runs, texts
from scheduler.config import Config
from scheduler.db import Store
from scheduler.nodes import Nodes, Status
from scheduler.stats import TARGETS

log = logging.getLogger(__name__)

SWEEP_LIMIT = 2000  # runs asked about per sweep; the rest wait for the next one
MAINTENANCE_ID = "maintenance"


@dataclass
class SweepReport:
    asked: int = 0
    renewed: int = 0
    requeued: int = 0
    lost: int = 0


def _as_datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


class Maintenance:
    def __init__(self, config: Config, store: Store, nodes: Nodes, threads: int = 8) -> None:
        self.config = config
        self.store = store
        self.nodes = nodes
        self.threads = threads
        self.stopping = threading.Event()
        self._silent_nodes: set[str] = set()

    @property
    def node_deadline(self) -> timedelta:
        return timedelta(seconds=self.config.process_timeout + self.config.lost_grace_secs)

    # --- hand-off sweep -----------------------------------------------------------------------------------

    def sweep_handed_off(self) -> SweepReport:
        now = self.store.clock.now()
        with db_session:
            rows = self.store.db.select(
                "SELECT id, sandbox_node, dispatched_at, started_at, lease_until FROM script_log "
                "WHERE state IN ('pending', 'running') AND dispatched_at IS NOT NULL AND dispatched_at < $fresh "
                "ORDER BY id LIMIT $limit",
                {"fresh": now - timedelta(seconds=1), "limit": SWEEP_LIMIT},
            )
        report = SweepReport(asked=len(rows))
        if not rows:
            return report
        known = set(self.nodes.nodes)
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            answers = list(
                pool.map(lambda r: self.nodes.status(r[1], int(r[0])) if r[1] in known else Status.NO_ANSWER, rows)
            )
        now = self.store.clock.now()
        hard_cap = 2 * self.node_deadline + timedelta(seconds=self.config.handoff_secs)
        renew: list[int] = []
        for (run_id, node, dispatched, started, deadline), answer in zip(rows, answers, strict=True):
            dispatched_at, deadline_at = _as_datetime(dispatched), _as_datetime(deadline)
            assert dispatched_at is not None
            if answer is Status.REPORTING:
                renew.append(int(run_id))  # the node holds the result and keeps offering it
            elif answer is Status.RUNNING:
                if now - dispatched_at > hard_cap:
                    report.lost += self._lost(
                        run_id, texts.SANDBOX_LOST_NO_RESULT.format(seconds=int(hard_cap.total_seconds()))
                    )
                else:
                    renew.append(int(run_id))
            elif answer is Status.DONE:
                # Results are stored before they are acknowledged: unless one arrived since the read above
                # (then this conditional write changes nothing), it was acknowledged without being recorded.
                report.lost += self._lost(run_id, texts.SANDBOX_LOST_NOT_RECORDED)
            elif answer is Status.NEVER:
                if now - dispatched_at < timedelta(seconds=self.config.handoff_secs):
                    continue  # the POST may still be on its way to the node
                if started is None and queue.release_unsent(self.store, [int(run_id)], str(node)):
                    log.info("run %s never reached %s: back in the queue", run_id, node)
                    report.requeued += 1
                else:
                    report.lost += self._lost(run_id, texts.SANDBOX_LOST_NODE_FORGOT)
            elif deadline_at is None or deadline_at + self.unreachable < now:
                report.lost += self._lost(run_id, texts.SANDBOX_LOST)
        self._note_silent(rows, answers)
        report.renewed = self._renew(renew, now + self.node_deadline)
        return report

    @property
    def unreachable(self) -> timedelta:
        return timedelta(seconds=self.config.unreachable_secs)

    def _note_silent(self, rows: list[Any], answers: list[Status]) -> None:
        """Log once when a node holding runs stops answering, and once when it answers again."""
        silent = {str(r[1]) for r, answer in zip(rows, answers, strict=True) if answer is Status.NO_ANSWER}
        heard = {str(r[1]) for r, answer in zip(rows, answers, strict=True) if answer is not Status.NO_ANSWER}
        for node in sorted(silent - self._silent_nodes):
            waiting = sum(1 for r, a in zip(rows, answers, strict=True) if a is Status.NO_ANSWER and str(r[1]) == node)
            log.warning("sandbox node %s does not answer about its %d runs: waiting for it (they end as sandbox lost "
                        "after %d s of silence past their deadline)", node, waiting, self.config.unreachable_secs)
        for node in sorted(heard & self._silent_nodes):
            log.info("sandbox node %s answers again", node)
        self._silent_nodes = (self._silent_nodes | silent) - heard

    def _lost(self, run_id: int, text: str, kind: str = outcomes.SANDBOX_LOST) -> int:
        outcome = runs.fail_run(self.store, int(run_id), text, outcome=kind)
        if outcome is runs.Outcome.APPLIED:
            logs.for_run(log, int(run_id)).warning("run ended: %s", text)
            return 1
        return 0

    def _renew(self, ids: list[int], deadline: datetime) -> int:
        renewed = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            names = {f"n{i}": run_id for i, run_id in enumerate(chunk)}

            def tx(names: dict[str, int] = names) -> int:
                cursor = self.store.db.execute(
                    "UPDATE script_log SET lease_until = $deadline "
                    f"WHERE id IN ({', '.join('$' + n for n in names)}) AND state <> 'finished'",
                    {"deadline": deadline, **names},
                )
                return int(cursor.rowcount)

            renewed += self.store.write(tx)
        return renewed

    # --- stale runs ---------------------------------------------------------------------------------------

    def end_stale(self) -> int:
        """Runs no sandbox of ours is responsible for: started elsewhere long ago, or queued too long."""
        now = self.store.clock.now()
        ended = 0
        limit = self.config.process_timeout + self.config.lost_grace_secs
        with db_session:
            stale = self.store.db.select(
                "SELECT id FROM script_log WHERE state = 'running' AND dispatched_at IS NULL AND started_at < $cutoff "
                "LIMIT $limit",
                {"cutoff": now - timedelta(seconds=limit), "limit": SWEEP_LIMIT},
            )
        for run_id in stale:
            ended += self._lost(int(run_id), texts.SANDBOX_LOST_NO_RESULT.format(seconds=limit))
        if self.config.queue_timeout:
            for run_id in self._claim_expired(now):
                ended += self._lost(
                    run_id, texts.QUEUE_TIMEOUT.format(seconds=self.config.queue_timeout), outcomes.NOT_STARTED
                )
        return ended

    def _claim_expired(self, now: datetime) -> list[int]:
        """Claim queued runs past the queue timeout, so no dispatcher hands them out while they are ended."""
        lock = " FOR UPDATE SKIP LOCKED" if self.store.mysql else ""

        def tx() -> list[int]:
            ids = [
                int(r)
                for r in self.store.db.select(
                    "SELECT id FROM script_log WHERE state = 'pending' AND dispatched_at IS NULL "
                    "AND (lease_until IS NULL OR lease_until < $now) AND created_at < $cutoff "
                    f"ORDER BY id LIMIT $limit{lock}",
                    {"now": now, "cutoff": now - timedelta(seconds=self.config.queue_timeout), "limit": SWEEP_LIMIT},
                )
            ]
            for run_id in ids:
                self.store.db.execute(
                    "UPDATE script_log SET claimed_by = $me, lease_until = $lease WHERE id = $run_id",
                    {"me": MAINTENANCE_ID, "lease": now + timedelta(seconds=self.config.lease_secs), "run_id": run_id},
                )
            return ids

        return self.store.write(tx)

    # --- retention ----------------------------------------------------------------------------------------

    def retention(self, pause: float = 0.01) -> dict[str, int]:
        """Delete old rows batch by batch; returns rows deleted per table."""
        now = self.store.clock.now()
        deleted = {
            "script_log": self._delete_batches(
                "script_log",
                "started_at < $cutoff AND (state IS NULL OR state = 'finished')",
                now - timedelta(days=self.config.delete_log_days),
                pause,
            )
        }
        cutoff_day = (now - timedelta(days=self.config.delete_statistics_days)).date()
        for table, _label, _column in TARGETS.values():
            deleted[table] = self._delete_batches(table, "run_date < $cutoff", cutoff_day, pause)
        if any(deleted.values()):
            log.info("retention deleted %s", deleted)
        return deleted

    def _delete_batches(self, table: str, condition: str, cutoff: Any, pause: float) -> int:
        total = 0
        batch = self.config.retention_batch
        while not self.stopping.is_set():

            def tx() -> int:
                ids = self.store.db.select(
                    f"SELECT id FROM {table} WHERE {condition} ORDER BY id LIMIT $batch",
                    {"cutoff": cutoff, "batch": batch},
                )
                if not ids:
                    return 0
                # The first `batch` matching ids in id order: every matching row in [min, max] is one of them.
                cursor = self.store.db.execute(
                    f"DELETE FROM {table} WHERE id >= $low AND id <= $high AND {condition}",
                    {"low": min(ids), "high": max(ids), "cutoff": cutoff},
                )
                return int(cursor.rowcount)

            count = self.store.write(tx)
            total += count
            if count < batch:
                break
            time.sleep(pause)  # let the API's writes in between batches
        return total

    # --- the loop -----------------------------------------------------------------------------------------

    def run(self) -> None:
        """Sweep every PYTHON_SWEEP_INTERVAL_SECS, retention every PYTHON_RETENTION_INTERVAL_SECS."""
        next_retention = 0.0
        while not self.stopping.is_set():
            for name, job in (("hand-off sweep", self.sweep_handed_off), ("stale sweep", self.end_stale),
                              ("WAL scrub", self.store.scrub)):
                try:
                    job()
                except Exception:
                    log.exception("%s failed", name)
            if time.monotonic() >= next_retention:
                try:
                    self.retention()
                except Exception:
                    log.exception("retention failed")
                next_retention = time.monotonic() + self.config.retention_interval
            self.stopping.wait(self.config.sweep_interval)

    def stop(self) -> None:
        self.stopping.set()
