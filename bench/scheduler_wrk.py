"""Scheduler API throughput with wrk against a real MariaDB: GET /run-script/<id>/ and POST /run-script/.

Run: /opt/seatable-pipeline/venv/bin/python -m bench.scheduler_wrk
Starts a private MariaDB (the test harness), migrates, seeds finished runs, starts `seatable-scheduler serve`
from this checkout, runs `wrk -t2 -c32 -d10s --latency` per endpoint, prints a table and updates the
scheduler section of BENCHMARKS.md (other sections are kept).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import requests

from bench import report
from scheduler.config import Config
from scheduler.db import run_migrate
from tests.support.mariadb import DatabaseSettings, start_server

REPO = Path(__file__).resolve().parents[1]
SECTION = "Scheduler API (wrk)"
TOKEN = secrets.token_urlsafe(16)
BASE = "0b5a4f2e-5d7c-4c6f-9a47-1e9d8b9f1a11"
UPSTREAM = {"GET /run-script/<id>/": "96 req/s, mean 330 ms", "POST /run-script/": "217 req/s"}

GET_LUA = """
math.randomseed(os.time())
request = function()
  local id = math.random(1, {rows})
  return wrk.format("GET", "/run-script/" .. id .. "/?dtable_uuid={base}&script_name=bench.py",
                    {{["Authorization"] = "Token {token}"}})
end
"""
POST_LUA = """
wrk.method = "POST"
wrk.headers["Authorization"] = "Token {token}"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{{"dtable_uuid": "{base}", "script_name": "bench.py", "owner": "alice@auth.local", "org_id": 7, '
  .. '"scripts_running_limit": -1, "operate_from": "manualy", "context_data": {{"table": "T", "row": {{"_id": "r"}}}}}}'
"""


@dataclass
class WrkResult:
    name: str
    requests_per_sec: float
    latency: dict[str, str]
    non_2xx: int
    errors: str


def seed(db: DatabaseSettings, rows: int) -> None:
    started = datetime(2026, 1, 1, 12, 0, 0)
    values = [
        (BASE, "alice@auth.local", 7, "bench.py", '{"row": {"_id": "r"}}', started + timedelta(seconds=i),
         started + timedelta(seconds=i + 2), 1, 0, "output " * 20, "manualy", "finished", started)
        for i in range(rows)
    ]  # fmt: skip
    with contextlib.closing(db.connect()) as conn, conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO script_log (dtable_uuid, owner, org_id, script_name, context_data, started_at, "
            "finished_at, success, return_code, output, operate_from, state, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            values,
        )


def run_wrk(name: str, url: str, lua: str, args: argparse.Namespace) -> WrkResult:
    """One measured wrk run, after an unmeasured warm-up that opens every worker thread's DB connection."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua)
    try:
        common = ["wrk", f"-t{args.threads}", f"-c{args.connections}", "-s", script.name]
        if args.warmup:
            subprocess.run([*common, f"-d{args.warmup}s", url], capture_output=True, check=True)
        command = [*common, f"-d{args.duration}s", "--latency", url]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    latency["mean"] = re.search(r"Latency\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return WrkResult(name, rps, latency, int(non_2xx.group(1)) if non_2xx else 0, errors.group(0) if errors else "")


def mariadb_version() -> str:
    out = subprocess.run(["/usr/sbin/mariadbd", "--version"], capture_output=True, text=True).stdout
    found = re.search(r"Ver\s+(\S+)", out)
    return found.group(1) if found else "unknown"


def render(results: list[WrkResult], args: argparse.Namespace, load: tuple[float, float, float]) -> str:
    durability = 2 if args.relaxed_durability else 1
    lines = [
        f"{report.machine()}; MariaDB {mariadb_version()}, Python {platform.python_version()}; "
        f"load average before the run {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min).",
        f"Command: `./dev bench scheduler_wrk` (= `python -m bench.scheduler_wrk`"
        f"{' --relaxed-durability' if args.relaxed_durability else ''}).",
        f"`wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency` after {args.warmup} s unmeasured "
        f"warm-up per endpoint; MariaDB on the same host (innodb_flush_log_at_trx_commit={durability}), "
        f"{args.rows} seeded runs, GET over random ids; gunicorn gthread {args.workers} workers x {args.gthreads} "
        "threads. wrk, MariaDB and the scheduler share the same cores.",
        "",
        "| Endpoint | req/s | mean | p50 | p90 | p99 | non-2xx | upstream (same machine) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lat = r.latency
        lines.append(
            f"| `{r.name}` | {r.requests_per_sec:,.0f} | {lat.get('mean')} | {lat.get('50')} | {lat.get('90')} "
            f"| {lat.get('99')} | {r.non_2xx} | {UPSTREAM.get(r.name, '')} |"
        )
    lines += ["", "Target: at least 1,000 req/s each with p99 under 100 ms."]
    return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(url + "/ping/", timeout=1).ok:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the scheduler at {url} did not come up")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--gthreads", type=int, default=8, help="threads per gunicorn worker")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured seconds of load before each run")
    parser.add_argument(
        "--relaxed-durability", action="store_true", help="innodb_flush_log_at_trx_commit=2 (no fsync per commit)"
    )
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()

    mariadb_args = ["--innodb-buffer-pool-size=256M"]
    if args.relaxed_durability:
        mariadb_args.append("--innodb-flush-log-at-trx-commit=2")
    load = os.getloadavg()
    server = start_server(tuple(mariadb_args))
    scheduler = None
    try:
        env = {**server.settings.env(), "PYTHON_SCHEDULER_AUTH_TOKEN": TOKEN}
        run_migrate(Config.from_env(env))
        seed(server.settings, args.rows)
        port = free_port()
        env.update(
            PYTHON_SCHEDULER_PORT=str(port),
            PYTHON_SCHEDULER_WORKERS=str(args.workers),
            PYTHON_SCHEDULER_THREADS=str(args.gthreads),
            PYTHON_SCHEDULER_LOG_LEVEL="WARNING",
            PYTHONPATH=str(REPO),
        )
        scheduler = subprocess.Popen(
            [sys.executable, "-m", "scheduler.cli", "serve"], cwd=REPO, env={**os.environ, **env}
        )
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url)
        fmt = {"rows": args.rows, "base": BASE, "token": TOKEN}
        results = [
            run_wrk("GET /run-script/<id>/", url, GET_LUA.format(**fmt), args),
            run_wrk("POST /run-script/", url + "/run-script/", POST_LUA.format(**fmt), args),
        ]
        failed = [r.name for r in results if r.non_2xx or r.errors]
        if failed:  # fast 4xx answers would make a meaningless number
            raise RuntimeError(f"requests failed during {failed}: {results}")
    finally:
        if scheduler is not None:
            scheduler.terminate()
            scheduler.wait(timeout=30)
        server.stop()
    section = render(results, args, load)
    print(f"## {SECTION}\n\n{section}")
    if not args.no_write:
        report.update_section(SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
