"""Retention in batches while the API answers, and the stale-run sweeps."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
import requests
from pony.orm import db_session

from scheduler import texts
from scheduler.config import Config
from scheduler.db import Store
from scheduler.maintenance import Maintenance
from scheduler.nodes import Nodes
from tests.dispatcher.conftest import REPO, SCRIPT, SeaTableStub, enqueue, row
from tests.scheduler.conftest import AUTH, RunningServer

pytestmark = pytest.mark.parametrize(
    "backend", ["sqlite", "mariadb"], indirect=True
)
STATS = ("dtable_run_script_statistics", "user_run_script_statistics", "org_run_script_statistics")


def _count(store: Store, table: str) -> int:
    with db_session:
        return int(store.db.select(f"SELECT COUNT(*) FROM {table}")[0])


def _seed(store: Store, base: str, old: int, recent: int) -> list[int]:
    """Finished runs 40 days and 1 day old, interleaved; statistics 100 and 10 days old."""
    now = store.clock.now()

    def tx() -> list[int]:
        ids = []
        for i in range(old + recent):
            started = now - timedelta(days=40 if i % 3 or i >= 3 * recent else 1)
            ids.append(
                store.db.insert(
                    "script_log",
                    returning="id",
                    dtable_uuid=base,
                    owner="alice@auth.local",
                    org_id=7,
                    script_name=SCRIPT,
                    state="finished",
                    started_at=started,
                    finished_at=started,
                    created_at=started,
                    success=True,
                    output="x",
                )
            )
        for table, key in zip(STATS, ("dtable_uuid", "username", "org_id"), strict=True):
            for day in range(20):
                for age in (100, 10):
                    value: object = 7000 + day if key == "org_id" else f"k{day}"
                    store.db.insert(
                        table,
                        **{key: value},
                        run_date=(now - timedelta(days=age + day)).date(),
                        total_run_count=1,
                        total_run_time=1.0,
                    )
        return [int(i) for i in ids]

    return store.write(tx)


def test_retention_deletes_only_rows_past_the_limits_in_batches_while_the_api_answers(
    db_env: dict[str, str],
    store: Store,
    seatable: SeaTableStub,
    serve: Callable[[dict[str, str]], RunningServer],
) -> None:
    old, recent = 2000, 300
    ids = _seed(store, seatable.base, old, recent)
    with db_session:
        keep = [
            int(i)
            for i in store.db.select(
                "SELECT id FROM script_log WHERE started_at >= $cut", {"cut": store.clock.now() - timedelta(days=30)}
            )
        ]
    expected_deleted = len(ids) - len(keep)
    pending = enqueue(store, seatable.base, 1)  # queued runs are never deleted
    server = serve(db_env)
    config = Config.from_env({**db_env, "PYTHON_RETENTION_BATCH": "250"})
    maintenance = Maintenance(config, store, Nodes((), ""))

    seen: list[int] = []
    answers: list[int] = []
    done = threading.Event()

    def observe() -> None:
        while not done.is_set():
            seen.append(_count(store, "script_log"))

    def poll() -> None:
        session = requests.Session()
        while not done.is_set():
            run_id = keep[len(answers) % len(keep)]
            response = session.get(
                f"{server.url}/run-script/{run_id}/",
                params={"dtable_uuid": seatable.base, "script_name": SCRIPT},
                headers=AUTH,
                timeout=10,
            )
            answers.append(response.status_code)

    threads = [threading.Thread(target=observe), threading.Thread(target=poll)]
    for thread in threads:
        thread.start()
    try:
        deleted = maintenance.retention(pause=0.05)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert deleted["script_log"] == expected_deleted
    assert all(deleted[table] == 20 for table in STATS)  # the 100-day rows; the 10-day rows stay
    with db_session:
        left = sorted(int(i) for i in store.db.select("SELECT id FROM script_log"))
    assert left == sorted(keep + pending)
    assert all(_count(store, table) == 20 for table in STATS)
    # Batches: the observer saw the table shrink in steps, never in one jump only.
    intermediate = {n for n in seen if len(keep) + 1 < n < len(ids) + 1}
    assert len(intermediate) >= 2, sorted(set(seen))
    assert answers and set(answers) == {200}, set(answers)
    assert maintenance.retention() == {"script_log": 0, **{t: 0 for t in STATS}}


def test_runs_started_elsewhere_and_runs_queued_too_long_end(
    db_env: dict[str, str], store: Store, seatable: SeaTableStub
) -> None:
    config = Config.from_env(
        {
            **db_env,
            "PYTHON_PROCESS_TIMEOUT": "60",
            "PYTHON_SANDBOX_LOST_GRACE_SECS": "0",
            "PYTHON_SCHEDULER_QUEUE_TIMEOUT": "120",
        }
    )
    maintenance = Maintenance(config, store, Nodes((), ""))
    stale, fresh, queued, young = enqueue(store, seatable.base, 4)
    long_ago = store.clock.now() - timedelta(seconds=300)
    store.write(
        lambda: store.db.execute(
            "UPDATE script_log SET state = 'running', started_at = $t WHERE id = $i", {"t": long_ago, "i": stale}
        )
    )
    store.write(
        lambda: store.db.execute(
            "UPDATE script_log SET state = 'running', started_at = $t WHERE id = $i",
            {"t": store.clock.now(), "i": fresh},
        )
    )
    store.write(
        lambda: store.db.execute("UPDATE script_log SET created_at = $t WHERE id = $i", {"t": long_ago, "i": queued})
    )
    assert maintenance.end_stale() == 2
    assert row(store, stale)["output"] == texts.SANDBOX_LOST_NO_RESULT.format(seconds=60)
    assert row(store, queued)["output"] == texts.QUEUE_TIMEOUT.format(seconds=120)
    assert row(store, fresh)["state"] == "running" and row(store, young)["state"] == "pending"


def test_cli_maintain_once_and_dispatch_refuses_to_start_without_a_sandbox_token(
    db_env: dict[str, str], store: Store, seatable: SeaTableStub
) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PYTHON_"))}, **db_env}
    done = subprocess.run(
        [sys.executable, "-m", "scheduler.cli", "maintain", "--once"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "retention: {'script_log': 0" in done.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "scheduler.cli", "dispatch"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "PYTHON_SANDBOX_AUTH_TOKEN must be set" in refused.stderr
