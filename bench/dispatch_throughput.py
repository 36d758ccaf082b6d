"""Dispatch throughput and the queue wait of a lone run behind a burst, on MariaDB.

Run: /opt/seatable-pipeline/venv/bin/python -m bench dispatch_throughput [--runs 1000] [--rounds 3]
Starts a private MariaDB (the test harness, default durability: innodb_flush_log_at_trx_commit=1), the
SeaTable stand-in and a stub sandbox node (each its own process; the node accepts every run at once and
counts it), then `seatable-scheduler dispatch` processes from this checkout. Each round inserts a burst of
runs in one transaction and measures until the node has accepted all of them: every run costs a claim, a
task/file fetch from the SeaTable stand-in, the hand-off mark and the POST. Prints a table and updates the
dispatcher section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from bench import report
from scheduler.config import Config
from scheduler.db import run_migrate
from tests.support.mariadb import DatabaseSettings, MariaDBServer, start_server

REPO = Path(__file__).resolve().parents[1]
SECTION = "Dispatcher (claim and hand-off)"
TOKEN = secrets.token_urlsafe(16)
NODE_TOKEN = secrets.token_urlsafe(16)
TEAMS = 10
# socketserver listens with a backlog of 5; three dispatchers fetch 48 task files at a time.
SEATABLE_STUB = (
    "import sys; import tests.seatable_stub.server as s; s.ThreadingWSGIServer.request_queue_size = 256; "
    "from tests.seatable_stub.__main__ import main; sys.exit(main())"
)


@dataclass
class Services:
    database: DatabaseSettings
    seatable_url: str
    base: str
    node_url: str
    logs: Path


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_line(path: Path, needle: str, process: subprocess.Popen[bytes], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if needle in line:
                return line
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited:\n{path.read_text(errors='replace')}")
        time.sleep(0.05)
    raise RuntimeError(f"no {needle!r} in {path}")


@contextlib.contextmanager
def services(logs: Path) -> Iterator[Services]:
    mariadb: MariaDBServer = start_server(("--innodb-buffer-pool-size=256M",))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        stub_log, node_log = logs / "seatable.log", logs / "node.log"
        procs.append(_spawn([sys.executable, "-c", SEATABLE_STUB, "--secret", TOKEN], stub_log))
        seatable_url = _wait_line(stub_log, "listening on", procs[-1]).rsplit(" ", 1)[1]
        procs.append(_spawn([sys.executable, "-m", "tests.support.stub_sandbox", "--token", NODE_TOKEN], node_log))
        node_url = _wait_line(node_log, "listening on", procs[-1]).rsplit(" ", 1)[1]
        base = requests.post(f"{seatable_url}/_stub/bases", json={}, timeout=10).json()["uuid"]
        requests.post(
            f"{seatable_url}/_stub/bases/{base}/scripts", json={"name": "bench.py", "content": "print(1)"}, timeout=10
        ).raise_for_status()
        yield Services(mariadb.settings, seatable_url, base, node_url, logs)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        mariadb.stop()


def _env(svc: Services, database: DatabaseSettings) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PYTHON_"))},
        **database.env(),
        "PYTHONPATH": str(REPO),
        "PYTHON_SCHEDULER_AUTH_TOKEN": TOKEN,
        "SEATABLE_SERVER_URL": svc.seatable_url,
        "PYTHON_SANDBOX_URLS": svc.node_url,
        "PYTHON_SANDBOX_AUTH_TOKEN": NODE_TOKEN,
        "PYTHON_SCHEDULER_LOG_LEVEL": "WARNING",
    }


def _insert(database: DatabaseSettings, base: str, count: int, team: int | None = None) -> tuple[list[int], float]:
    """One transaction of `count` pending runs; returns their ids and the epoch right after the commit."""
    now = datetime.now()
    rows = [
        (
            base,
            f"user{(team if team is not None else i % TEAMS)}@auth.local",
            100 + (team if team is not None else i % TEAMS),
            "bench.py",
            '{"row": {"_id": "r"}}',
            "manualy",
            "pending",
            now,
            0,
        )
        for i in range(count)
    ]
    conn = database.connect()
    conn.autocommit(False)
    with contextlib.closing(conn), conn.cursor() as cursor:
        cursor.execute("SELECT COALESCE(MAX(id), 0) FROM script_log")
        first = int(cursor.fetchone()[0]) + 1
        cursor.executemany(
            "INSERT INTO script_log (dtable_uuid, owner, org_id, script_name, context_data, operate_from, state, "
            "created_at, attempt) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )
        conn.commit()
        committed = time.time()
        cursor.execute("SELECT id FROM script_log WHERE id >= %s ORDER BY id", (first,))
        ids = [int(r[0]) for r in cursor.fetchall()]
    return ids[-count:], committed


def _counts(svc: Services) -> dict[str, Any]:
    data: dict[str, Any] = requests.get(f"{svc.node_url}/_stub/counts", timeout=30).json()
    return data


def _wait_accepted(svc: Services, ids: list[int], timeout: float = 120) -> dict[int, float]:
    wanted = {str(i) for i in ids}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = _counts(svc)
        if wanted <= counts["accepted"].keys():
            dupes = {k: n for k, n in counts["accepted"].items() if k in wanted and n != 1}
            if dupes:
                raise AssertionError(f"runs handed out more than once: {dupes}")
            return {int(k): float(counts["accepted_at"][k]) for k in wanted}
        time.sleep(0.05)
    raise AssertionError("not every run was handed off in time")


@contextlib.contextmanager
def dispatchers(svc: Services, database: DatabaseSettings, count: int) -> Iterator[None]:
    procs = []
    for n in range(count):
        log = svc.logs / f"dispatcher-{count}-{n}.log"
        env = {**_env(svc, database), "PYTHON_SCHEDULER_LOG_LEVEL": "INFO"}
        procs.append((_spawn([sys.executable, "-m", "scheduler.cli", "dispatch"], log, env), log))
    try:
        for proc, log in procs:
            _wait_line(log, "started", proc)
        yield
    finally:
        codes = []
        for proc, _log in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _log in procs:
            codes.append(proc.wait(timeout=60))
        if any(codes):
            raise AssertionError(f"dispatchers exited with {codes}")


def _fresh_database(svc: Services, name: str) -> DatabaseSettings:
    conn = svc.database.connect(database="")
    with contextlib.closing(conn), conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    database = DatabaseSettings(
        svc.database.host, svc.database.port, svc.database.user, svc.database.password, name, svc.database.socket
    )
    run_migrate(Config.from_env({**database.env(), "PYTHON_SCHEDULER_AUTH_TOKEN": TOKEN}))
    return database


def _finish_all(database: DatabaseSettings) -> None:
    """The stub node never reports: end every handed-off run (zero run time) as its result would."""
    conn = database.connect()
    with contextlib.closing(conn), conn.cursor() as cursor:
        cursor.execute(
            "UPDATE script_log SET state = 'finished', started_at = dispatched_at, finished_at = dispatched_at, "
            "success = 1, return_code = 0 WHERE state <> 'finished' AND dispatched_at IS NOT NULL"
        )


def throughput(svc: Services, database: DatabaseSettings, count: int, runs: int, rounds: int) -> list[float]:
    rates = []
    with dispatchers(svc, database, count):
        for _ in range(rounds):
            ids, committed = _insert(database, svc.base, runs)
            accepted = _wait_accepted(svc, ids)
            rates.append(runs / (max(accepted.values()) - committed))
            _finish_all(database)
            time.sleep(0.5)
    return rates


def lone_run(svc: Services, database: DatabaseSettings, burst: int, rounds: int) -> tuple[list[float], list[float]]:
    """Wait of one run of a second team inserted right after a burst of one team; and the burst's drain time."""
    waits, drains = [], []
    with dispatchers(svc, database, 3):
        for _ in range(rounds):
            burst_ids, burst_at = _insert(database, svc.base, burst, team=1)
            [lone], lone_at = _insert(database, svc.base, 1, team=2)
            accepted = _wait_accepted(svc, [*burst_ids, lone])
            waits.append(accepted[lone] - lone_at)
            drains.append(max(accepted[i] for i in burst_ids) - burst_at)
            _finish_all(database)
            time.sleep(0.5)
    return waits, drains


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp, services(Path(tmp)) as svc:
        # One database throughout: script ids never repeat, so the node's counts stay per run.
        database = _fresh_database(svc, "bench_dispatch")
        one = throughput(svc, database, 1, args.runs, args.rounds)
        three = throughput(svc, database, 3, args.runs, args.rounds)
        waits, drains = lone_run(svc, database, args.runs, max(args.rounds, 5))
    rows = [
        ("Dispatch throughput, 1 dispatcher", f"{report.median(one):.0f} runs/s", "", _spread(one, "runs/s")),
        (
            "Dispatch throughput, 3 dispatchers",
            f"{report.median(three):.0f} runs/s",
            ">= 500 runs/s",
            _spread(three, "runs/s"),
        ),
        (
            f"Queue wait of a lone run behind a {args.runs}-run burst (3 dispatchers)",
            f"{report.median(waits) * 1000:.0f} ms median, {max(waits) * 1000:.0f} ms max",
            "< 1 s",
            f"burst drained in {report.median(drains):.2f} s median",
        ),
    ]
    table = ["| Measure | Result | Target | Rounds |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    body = "\n".join(
        [
            f"Machine: {report.machine()}.",
            "",
            f"`python -m bench dispatch_throughput --runs {args.runs} --rounds {args.rounds}`: MariaDB 10.11 "
            "(harness server, default durability), the SeaTable stand-in and a stub sandbox node that accepts at "
            "once, each its own process, all on this machine with the dispatchers. Each run: a fair-share claim "
            "(batches of up to 50), a task/file fetch, the hand-off mark committed before the POST, the POST. "
            "Bursts are inserted in one transaction over 10 teams (the lone-run case: one team, then one run "
            "of another team); a round ends when the node has accepted every run, each exactly once.",
            "",
            *table,
        ]
    )
    print(body)
    report.update_section(SECTION, body)
    return 0


def _spread(values: list[float], unit: str) -> str:
    return ", ".join(f"{v:.0f}" for v in values) + f" {unit}"


if __name__ == "__main__":
    raise SystemExit(main())
