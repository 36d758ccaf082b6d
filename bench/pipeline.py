"""The whole pipeline against the sandbox alone: latency with its breakdown, a burst from 4 teams, CPU per run by
process, and 50 polling browsers, side by side in one run.

Run as root: `./dev bench pipeline [--runs 20] [--burst 500] [--browsers 50] [--gap 1] [--base CHECKOUT:PREFIX]
[--quick]`.
Systems, all started at once so the sequential runs interleave (a noisy machine hits each alike):
- sandbox alone: POST /function/run-python with the script's content until its result callback arrives.
- pipeline on SQLite and on MariaDB (the test harness starts MariaDB): a SeaTable stand-in (task/file and the
  one-time script download), the scheduler under gunicorn (2 workers), `dispatch --maintain`, and the sandbox as
  the sandbox user; POST /run-script/ until GET /run-script/<id>/ shows `finished` (polled every 5 ms).
- with --base: the same two pipelines from another checkout (scheduler) and its prefix (sandbox), e.g. the
  commit a change started from.
Every sandbox has the same settings (10 slots, warm pool 2, PYTHON_RUNNER_NETWORK=seatable as the end-to-end
harness uses: the stand-in listens on loopback) and the script is `print('hi')`.
Sequential breakdown from the database columns (TIME_ZONE=UTC): created_at (API accepted), dispatched_at
(claimed, task/file and script fetched, marked as handed off just before the POST), started_at (the sandbox
started the runner), finished_at (started_at + spend_time: the runner ended), then visible to GET (client).
Burst: N runs posted by 4 teams at once; runs/s from the first POST until GET shows the last one finished
(the sandbox alone: until its last result callback), time to result per run from created_at to the runner's end.
CPU per run during the burst: bench/cpu_split.py (process accounting plus the services' own counters).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import multiprocessing
import os
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench.browsers import in_process as browsers_process
from bench.cpu_split import CpuSplit, podman_service_pids
from bench.report import machine, median, percentile, update_section
from sandbox.host import configured_user, lookup_user
from tests.support.mariadb import DatabaseSettings, MariaDBServer, start_server
from tests.support.pipeline import REPO, Pipeline
from tests.support.podman import CallbackReceiver, SandboxProcess, free_port, secret_for

SCRIPT, EXPECTED = "print('hi')", "hi\n"
TEAMS = 4
POLL = 0.005
SANDBOX_ENV = {
    "PYTHON_STARTER_THREAD_COUNT": "10",
    "PYTHON_SANDBOX_WARM_POOL": "2",
    "PYTHON_RUNNER_NETWORK": "seatable",
    "PYTHON_SANDBOX_LOG_LEVEL": "warning",
}
BENCH_CLIENT = "bench client, SeaTable stand-in, stand-in scheduler"
BROWSERS = "polling browsers (the bench's stand-ins for users' machines)"
STAGES = ("POST answered", "accepted → handed off", "handed off → runner started", "runner started → ended",
          "runner ended → visible to GET")


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    return float(value.replace(tzinfo=datetime.UTC).timestamp())


@dataclass
class Burst:
    runs: int
    wall: float
    to_result_ms: list[float]
    cpu: dict[str, float]
    browsers: int = 0
    get_ms: list[float] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)  # runs/s of each round, when there were several

    @property
    def rate(self) -> float:
        return self.runs / self.wall


def pooled(bursts: list[Burst]) -> Burst:
    """Several rounds of one system's burst as one: all runs over all their wall time, the CPU summed."""
    cpu: dict[str, float] = {}
    for burst in bursts:
        for group, seconds in burst.cpu.items():
            cpu[group] = cpu.get(group, 0.0) + seconds
    return Burst(sum(b.runs for b in bursts), sum(b.wall for b in bursts),
                 [ms for b in bursts for ms in b.to_result_ms], cpu, bursts[0].browsers,
                 [ms for b in bursts for ms in b.get_ms], [b.rate for b in bursts] if len(bursts) > 1 else [])


class SandboxAlone:
    """The sandbox service with a stand-in scheduler that records when each result arrives."""

    name = "sandbox alone"

    def __init__(self, work: Path) -> None:
        self.receiver = CallbackReceiver()
        self.arrived: dict[int, float] = {}
        self.receiver.answer = self._arrived
        self.receiver.start()
        user = lookup_user(configured_user())
        state = work / "alone"
        state.mkdir()
        os.chown(state, user.uid, user.gid)
        port = free_port()
        self.proc = SandboxProcess(user, {
            "PYTHON_SANDBOX_AUTH_TOKEN": "bench", "PYTHON_SCHEDULER_URL": self.receiver.url,
            "PYTHON_SANDBOX_BIND": f"127.0.0.1:{port}",
            "PYTHON_SANDBOX_STATE_DIR": str(state), "PYTHON_SANDBOX_NODE_NAME": f"bench-alone-{port}",
            **SANDBOX_ENV}, port, state, token="bench")
        self.proc.start()
        self.ids = iter(range(1, 1 << 40))
        self.session = requests.Session()
        self.slots = threading.Semaphore(int(SANDBOX_ENV["PYTHON_STARTER_THREAD_COUNT"]))

    def _arrived(self, path: str, body: dict[str, Any]) -> int:
        if path == "/script-result/":
            script_id = int(body.get("script_id", 0))
            if script_id not in self.arrived:
                self.arrived[script_id] = time.time()
                self.slots.release()
        return 200

    def submit(self, script_id: int) -> None:
        while True:
            response = self.session.post(self.proc.url + "/function/run-python", timeout=30,
                                         headers={"Authorization": "Token bench"},
                                         json={"script_id": script_id, "script_content": SCRIPT, "env": {},
                                               "callback_secret": secret_for(script_id)})
            if response.status_code == 202:
                return
            assert response.status_code == 429, response.text
            time.sleep(0.02)

    def one(self) -> tuple[float, int | None]:
        script_id = next(self.ids)
        started = time.time()
        self.slots.acquire()
        self.submit(script_id)
        result = self.receiver.result(script_id)
        assert result["output"] == EXPECTED, result
        return time.time() - started, None

    def burst(self, n: int, cpu: CpuSplit, browsers: int = 0, interval: float = 0.5) -> Burst:
        ids = [next(self.ids) for _ in range(n)]
        cpu.start()
        first = time.time()  # every run of the burst counts as queued from here, as in the pipeline's queue
        for script_id in ids:  # like a dispatcher that knows when a slot frees: no 429 storm
            self.slots.acquire()
            self.submit(script_id)
        self.receiver.wait_for(lambda: all(i in self.arrived for i in ids), timeout=600 + n)
        wall = max(self.arrived[i] for i in ids) - first
        split = cpu.stop()
        return Burst(n, wall, [(self.arrived[i] - first) * 1000 for i in ids], split)

    def cpu_groups(self) -> dict[str, Any]:
        return {"sandbox service": lambda: [self.proc.process.pid] if self.proc.process else []}

    def stop(self) -> None:
        self.proc.stop()
        self.receiver.stop()


class PipelineSystem:
    """Scheduler, dispatcher, sandbox and a SeaTable stand-in, from one checkout and prefix."""

    def __init__(self, name: str, work: Path, repo: Path, venv: Path | None, db: DatabaseSettings | None) -> None:
        self.name = name
        self.db = db
        self.pipeline = Pipeline(
            say=lambda _text: None, db_env=db.env() if db else {}, sandbox_env=dict(SANDBOX_ENV),
            workdir=work / name.replace(" ", "-"), repo=repo, sandbox_venv=venv,
            scheduler_extra_env={"TIME_ZONE": "UTC", "PYTHON_SCHEDULER_WORKERS": "2",
                             "PYTHON_SCHEDULER_LOG_LEVEL": "WARNING"})
        if venv is not None:
            # Another prefix may be a commit from before the credentials split (issue 20), whose sandbox signs
            # its callbacks with SeaTable's secret; today's sandbox ignores the variable.
            self.pipeline.sandbox_env["PYTHON_SCHEDULER_AUTH_TOKEN"] = self.pipeline.secret
        self.pipeline.workdir.mkdir(parents=True)
        self.pipeline.start()
        assert self.pipeline.stub is not None
        self.bases = []
        for team in range(TEAMS):
            base = self.pipeline.stub.seatable.add_base(name=f"Team {team}")
            self.pipeline.stub.seatable.add_script(base.uuid, "hi.py", SCRIPT)
            self.bases.append(str(uuid.UUID(base.uuid)))
        self.headers = {"Authorization": f"Token {self.pipeline.secret}"}
        self.url = self.pipeline.scheduler_url
        self.session = requests.Session()
        self.answered: dict[int, float] = {}  # POST /run-script/ answered, seconds after it was sent
        self.visible: dict[int, float] = {}  # epoch when GET first showed it finished

    def post(self, session: requests.Session, team: int) -> int:
        body = {"dtable_uuid": self.bases[team], "script_name": "hi.py", "owner": f"team{team}@bench",
                "org_id": -1, "scripts_running_limit": -1, "operate_from": "manualy", "context_data": None}
        response = session.post(f"{self.url}/run-script/", json=body, headers=self.headers, timeout=30)
        assert response.status_code == 200, response.text
        return int(response.json()["script_id"])

    def get(self, session: requests.Session, script_id: int, team: int) -> dict[str, Any]:
        response = session.get(f"{self.url}/run-script/{script_id}/", headers=self.headers, timeout=30,
                               params={"dtable_uuid": self.bases[team], "script_name": "hi.py"})
        assert response.status_code == 200, response.text
        script: dict[str, Any] = response.json()["script"]
        return script

    def one(self) -> tuple[float, int | None]:
        session = self.session
        started = time.time()
        script_id = self.post(session, 0)
        self.answered[script_id] = time.time() - started
        while True:
            script = self.get(session, script_id, 0)
            if script["state"] == "finished":
                break
            time.sleep(POLL)
        elapsed = time.time() - started
        assert script["output"] == EXPECTED and script["success"], script
        self.visible[script_id] = started + elapsed
        return elapsed, script_id

    def rows(self, ids: list[int]) -> dict[int, tuple[float | None, ...]]:
        """created_at, dispatched_at, started_at, finished_at (epoch) of the runs."""
        marks = ", ".join(str(int(i)) for i in ids)
        found = self._query(
            f"SELECT id, created_at, dispatched_at, started_at, finished_at FROM script_log WHERE id IN ({marks})")
        return {int(r[0]): tuple(_epoch(v) for v in r[1:]) for r in found}

    def _query(self, sql: str) -> list[Any]:
        if self.db is None:
            path = self.pipeline.workdir / "scheduler.sqlite3"
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
                return list(conn.execute(sql).fetchall())
        with contextlib.closing(self.db.connect()) as conn, conn.cursor() as cursor:
            cursor.execute(sql)
            return list(cursor.fetchall())

    def breakdown(self, ids: list[int]) -> dict[str, list[float]]:
        stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
        for script_id, (created, dispatched, started, finished) in self.rows(ids).items():
            if None in (created, dispatched, started, finished):
                continue
            assert created is not None and dispatched is not None and started is not None and finished is not None
            values = (self.answered[script_id], dispatched - created, started - dispatched, finished - started,
                      self.visible[script_id] - finished)
            for stage, value in zip(STAGES, values, strict=True):
                stages[stage].append(value * 1000)
        return stages

    def burst(self, n: int, cpu: CpuSplit, browsers: int = 0, interval: float = 1.0) -> Burst:
        ids: list[tuple[int, int]] = []
        lock = threading.Lock()

        def team_client(team: int) -> None:
            session = requests.Session()
            for _ in range(n // TEAMS + (1 if team < n % TEAMS else 0)):
                script_id = self.post(session, team)
                with lock:
                    ids.append((script_id, team))

        context = multiprocessing.get_context("spawn")
        stop, ready, results = context.Event(), context.Event(), context.Queue()
        first_id = self._query("SELECT MAX(id) FROM script_log")[0][0] + 1  # the bench alone writes runs here
        args = (self.url, self.headers, self.bases, first_id, n, browsers, interval, stop, results, ready)
        watchers = [context.Process(target=browsers_process, args=args, daemon=True)] if browsers else []
        for process in watchers:
            process.start()
            assert ready.wait(60), "the polling browsers did not start"
        cpu.groups = {BROWSERS: lambda: [p.pid for p in watchers if p.pid is not None], **cpu.groups}
        cpu.start()
        first = time.time()
        clients = [threading.Thread(target=team_client, args=(t,)) for t in range(TEAMS)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        session = requests.Session()
        deadline = time.monotonic() + 600 + n
        for script_id, team in sorted(ids):
            while self.get(session, script_id, team)["state"] != "finished":
                assert time.monotonic() < deadline, f"run {script_id} not finished"
                time.sleep(0.1)
        wall = time.time() - first
        split = cpu.stop()
        stop.set()
        get_ms: list[float] = results.get(timeout=60) if watchers else []
        for process in watchers:
            process.join(30)
        rows = self.rows([i for i, _ in ids])
        to_result = [(r[3] - r[0]) * 1000 for r in rows.values() if r[0] is not None and r[3] is not None]
        return Burst(n, wall, to_result, split, browsers, get_ms)

    def cpu_groups(self) -> dict[str, Any]:
        by_name = {s.name: s for s in self.pipeline.services}
        sandbox = self.pipeline.sandbox
        return {
            "scheduler API (gunicorn)": lambda: [by_name["scheduler"].process.pid],
            "dispatcher (dispatch --maintain)": lambda: [by_name["dispatcher"].process.pid],
            "sandbox service": lambda: [sandbox.process.pid] if sandbox and sandbox.process else [],
        }

    def stop(self) -> None:
        self.pipeline.stop()


def cpu_meter(system: Any, mariadb: MariaDBServer | None) -> CpuSplit:
    user = lookup_user(configured_user())
    groups = {**system.cpu_groups(), "Podman API service": lambda: podman_service_pids(user.uid)}
    if mariadb is not None and isinstance(system, PipelineSystem) and system.db is not None:
        groups["MariaDB"] = lambda: [mariadb.process.pid]
    # Last: a process belongs to the first group that names it, and MariaDB and the browsers are this one's children.
    groups[BENCH_CLIENT] = lambda: [os.getpid()]
    return CpuSplit(user.name, user.uid, groups)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="sequential runs per system")
    parser.add_argument("--burst", type=int, default=500, help="runs in each burst")
    parser.add_argument("--browsers", type=int, default=50, help="polling browsers in the extra burst (0: none)")
    parser.add_argument("--browser-interval", type=float, default=1.0, help="seconds between one browser's GETs")
    parser.add_argument("--gap", type=float, default=1.0,
                        help="seconds between sequential runs: the last run's runner removed and replaced meanwhile")
    parser.add_argument("--browsers-on", nargs="+", default=["MariaDB"], choices=["SQLite", "MariaDB"],
                        help="the pipelines that get the extra burst with browsers")
    parser.add_argument("--base", default="", help="CHECKOUT:PREFIX of the commit to compare with")
    parser.add_argument("--burst-rounds", type=int, default=1,
                        help="bursts in this many rounds, every other one in reverse order (the machine's drift "
                             "during the bursts then falls on every system alike); runs/s over all rounds")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 5 runs, bursts of 40")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.burst = 5, 40
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-pipeline-{os.getpid()}"
    work.mkdir(mode=0o755)
    mariadb = start_server(("--innodb-buffer-pool-size=256M",))
    systems: list[Any] = []
    load = os.getloadavg()
    try:
        systems.append(SandboxAlone(work))
        code: list[tuple[str, Path, Path | None]] = [("", REPO, None)]
        if args.base:
            checkout, _, prefix = args.base.partition(":")
            code.append((" (base)", Path(checkout).resolve(), Path(prefix) / "venv" / "bin"))
        for suffix, repo, venv in code:
            systems.append(PipelineSystem(f"pipeline, SQLite{suffix}", work, repo, venv, None))
            systems.append(PipelineSystem(f"pipeline, MariaDB{suffix}", work, repo, venv, mariadb.create_database()))
        results = measure(systems, args, mariadb)
    finally:
        for system in systems:
            with contextlib.suppress(Exception):
                system.stop()
        mariadb.stop()
        shutil.rmtree(work, ignore_errors=True)
    body = render(results, args, load)
    print(body)
    if not args.no_write:
        update_section("Whole pipeline: latency, throughput, CPU per run", body)
    return 0


def measure(systems: list[Any], args: argparse.Namespace, mariadb: MariaDBServer) -> dict[str, Any]:
    latency: dict[str, list[float]] = {s.name: [] for s in systems}
    ids: dict[str, list[int]] = {s.name: [] for s in systems}
    for i in range(args.runs + 3):
        for system in systems:
            time.sleep(args.gap)  # the previous run's runner removed and replaced: a lone click on a quiet host
            elapsed, script_id = system.one()
            if i >= 3:  # warm-up: connections, caches, the first pool refill
                latency[system.name].append(elapsed * 1000)
                if script_id is not None:
                    ids[system.name].append(script_id)
    breakdown = {s.name: s.breakdown(ids[s.name]) for s in systems if isinstance(s, PipelineSystem)}
    # (name, system, browsers): every burst of a round, the browsers' after the plain ones.
    plan = [(system.name, system, 0) for system in systems]
    if args.browsers:
        chosen = [f"pipeline, {db}" for db in args.browsers_on]
        plan += [(system.name + f", {args.browsers} browsers", system, args.browsers) for system in systems
                 if isinstance(system, PipelineSystem) and system.name in chosen]
    rounds: dict[str, list[Burst]] = {name: [] for name, _, _ in plan}
    for round_ in range(max(1, args.burst_rounds)):
        for name, system, browsers in plan if round_ % 2 == 0 else reversed(plan):
            time.sleep(2)
            rounds[name].append(system.burst(args.burst, cpu_meter(system, mariadb), browsers, args.browser_interval))
    bursts = {name: pooled(each) for name, each in rounds.items()}
    return {"latency": latency, "breakdown": breakdown, "bursts": bursts}


def render(results: dict[str, Any], args: argparse.Namespace, load: tuple[float, float, float]) -> str:
    latency: dict[str, list[float]] = results["latency"]
    alone = median(latency["sandbox alone"])
    lines = [f"{machine()}; load average before the run {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.",
             f"Command: `./dev bench pipeline --runs {args.runs} --burst {args.burst} --browsers {args.browsers} "
             f"--browser-interval {args.browser_interval:g} --browsers-on {' '.join(args.browsers_on)} "
             f"--gap {args.gap:g}" + (f" --burst-rounds {args.burst_rounds}" if args.burst_rounds > 1 else "")
             + (f" --base {args.base}" if args.base else "") + "`. Script `print('hi')`; every sandbox with 10 "
             "slots, warm pool 2, network `seatable`.", "",
             "Sequential, one run at a time (POST until finished, polled every 5 ms), interleaved across systems, "
             f"{args.gap:g} s apart:", "",
             "| system | p50 ms | p90 ms | p50 minus sandbox alone p50 |", "|---|---:|---:|---:|"]
    for name, values in latency.items():
        lines.append(f"| {name} | {median(values):.0f} | {percentile(values, 90):.0f} | "
                     f"{median(values) - alone:+.0f} |")
    lines += ["", "Where the sequential time goes (p50 of each stage, ms; database columns, see the bench's doc):", ""]
    names = list(results["breakdown"])
    lines += ["| stage | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for stage in STAGES:
        lines.append(f"| {stage} | " + " | ".join(f"{median(results['breakdown'][n][stage]):.0f}" for n in names)
                     + " |")
    bursts: dict[str, Burst] = results["bursts"]
    alone_rate = bursts["sandbox alone"].rate
    rounds = max(1, args.burst_rounds)
    lines += ["", f"Burst of {args.burst} runs from {TEAMS} teams (the sandbox alone: 10 in flight, the next one "
              "sent when a result arrives)"
              + (f", {rounds} rounds, every other one in reverse order; runs/s over all of them:" if rounds > 1
                 else ":"),
              "", "| system | runs/s | vs sandbox alone | time to result p50 ms | p99 ms | max ms | GET p50 / p99 ms |"
              + (" each round, runs/s |" if rounds > 1 else ""),
              "|---|---:|---:|---:|---:|---:|---|" + ("---|" if rounds > 1 else "")]
    for name, b in bursts.items():
        gets = f"{median(b.get_ms):.0f} / {percentile(b.get_ms, 99):.0f} ({len(b.get_ms)} GETs)" if b.get_ms else ""
        lines.append(f"| {name} | {b.rate:.2f} | {b.rate / alone_rate:.0%} | {median(b.to_result_ms):.0f} | "
                     f"{percentile(b.to_result_ms, 99):.0f} | {max(b.to_result_ms):.0f} | {gets} |"
                     + (" " + ", ".join(f"{r:.2f}" for r in b.rounds) + " |" if rounds > 1 else ""))
    groups = sorted({g for b in bursts.values() for g in b.cpu}, key=lambda g: (g == "whole machine", "not ours" in g))
    cols = list(bursts)
    lines += ["", "CPU per run during the burst, ms (process accounting and the services' counters):", "",
              "| process | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for group in groups:
        lines.append(f"| {group} | " + " | ".join(
            f"{bursts[n].cpu.get(group, 0.0) / bursts[n].runs * 1000:.0f}" for n in cols) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
