"""Cluster scaling: dispatch throughput and time-to-start with 1, 2 and 3 sandbox hosts and 1 and 2 dispatchers.

Run: ./dev bench cluster [--runs 200] [--configs 1x1,2x1,3x1,1x2,2x2,3x2]
Starts the cluster harness once (tests/cluster/harness.py: three Galera nodes, three sandbox hosts in network
namespaces, two scheduler APIs) and, for each configuration "HOSTSxDISPATCHERS", starts that many dispatchers
handing runs to that many hosts (dispatcher d1 writes through Galera node1, d2 through node2). Per configuration:

- idle: dispatcher CPU per second while the queue is empty (the /ready polls: the overhead a host adds);
- lone run: 5 single `print('hi')` runs on the idle cluster, created -> started and created -> finished;
- burst: --runs `print('hi')` runs submitted through both APIs at once; dispatch rate (runs handed off per
  second, first created to last handed off), finish rate, created -> started p50/p90, and the CPU each kind
  of process spent per run (dispatchers, sandbox services per host, Galera nodes; the runners' own CPU is
  not attributed);
- fair share: a big team submits 8 runs per slot of `sleep(1)`, one second later a small team submits one run:
  how long the small team's run waits, next to the big team's median wait.

All hosts share this machine's cores, so more hosts do not mean more CPU: the table shows what a host and a
dispatcher cost and how the queue behaves, not capacity. Prints the tables with machine and date (BENCHMARKS.md
has a run).
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bench import report
from tests.cluster.harness import Cluster, Topology
from tests.seatable_stub.button import RunScriptButton

HELLO = "hello.py"
SLEEPY = "sleepy.py"
BIG_TEAM, SMALL_TEAM = 101, 202
TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants, as far as they still live."""
    total, todo, seen = 0.0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, IndexError, ValueError):
            continue
    return total


@dataclass
class Result:
    hosts: int
    dispatchers: int
    runs: int = 0
    idle_dispatcher_ms_per_s: float = 0.0
    lone_start_ms: float = 0.0
    lone_finish_ms: float = 0.0
    dispatch_rate: float = 0.0
    finish_rate: float = 0.0
    start_p50_ms: float = 0.0
    start_p90_ms: float = 0.0
    cpu_ms_per_run: dict[str, float] = field(default_factory=dict)
    small_wait_ms: float = 0.0
    big_wait_p50_ms: float = 0.0


class Bench:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        assert cluster.stub is not None
        seatable = cluster.stub.seatable
        self.base = seatable.add_base(name="bench").uuid
        seatable.add_script(self.base, HELLO, "print('hi')\n")
        seatable.add_script(self.base, SLEEPY, "import time\ntime.sleep(1)\nprint('slept')\n")

    def submit(self, count: int, script: str, org_id: int, owner: str = "bench@x") -> list[int]:
        """`count` runs through the APIs in turn. New connections per call: a kept-alive connection that sat idle
        past gunicorn's keep-alive may be reset when reused, and a POST /run-script/ must not be sent twice."""
        buttons = [RunScriptButton(self.cluster.api_url(i), self.cluster.secret, request_timeout=60)
                   for i in range(len(self.cluster.apis))]

        def one(i: int) -> int:
            return buttons[i % len(buttons)].submit(self.base, script, owner=owner, org_id=org_id)

        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(one, range(count)))

    def wait_finished(self, ids: list[int], timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        marks = ",".join(map(str, ids))
        while True:
            rows = self.cluster.try_query(f"SELECT COUNT(*) FROM script_log WHERE id IN ({marks}) "
                                          "AND state <> 'finished'")
            if rows and rows[0][0] == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"runs not finished within {timeout:.0f} s")
            time.sleep(0.5)

    def times(self, ids: list[int]) -> list[tuple[datetime, datetime | None, datetime | None, datetime | None]]:
        rows = self.cluster.query(
            "SELECT created_at, dispatched_at, started_at, finished_at FROM script_log "
            f"WHERE id IN ({','.join(map(str, ids))}) ORDER BY id")
        return [tuple(r) for r in rows]

    def cpu(self) -> dict[str, float]:
        c = self.cluster
        assert c.galera is not None
        values = {"dispatchers": sum(tree_cpu(s.process.pid) for s in c.dispatchers if s is not None),
                  "APIs": sum(tree_cpu(s.process.pid) for s in c.apis),
                  "Galera": sum(tree_cpu(n.process.pid) for n in c.galera.nodes if n.process is not None)}
        for host in c.hosts:
            values[f"sandbox {host.name}"] = tree_cpu(host.process.pid) if host.process else 0.0
        return values

    def configure(self, hosts: int, dispatchers: int) -> None:
        for i in range(len(self.cluster.dispatchers)):
            self.cluster.stop_dispatcher(i)
        for i in range(dispatchers):
            self.cluster.start_dispatcher(i, hosts=hosts)
        warm = self.submit(hosts * self.cluster.topology.slots, HELLO, org_id=1)
        self.wait_finished(warm)
        time.sleep(3)  # warm pools refill

    def measure(self, hosts: int, dispatchers: int, runs: int) -> Result:
        result = Result(hosts, dispatchers, runs)
        self.configure(hosts, dispatchers)
        before, started = self.cpu()["dispatchers"], time.monotonic()
        time.sleep(10)
        result.idle_dispatcher_ms_per_s = (self.cpu()["dispatchers"] - before) / (time.monotonic() - started) * 1000

        lone_start, lone_finish = [], []
        for _ in range(5):
            run_id = self.submit(1, HELLO, org_id=2)[0]
            self.wait_finished([run_id])
            created, _dispatched, began, finished = self.times([run_id])[0]
            assert began is not None and finished is not None
            lone_start.append((began - created).total_seconds() * 1000)
            lone_finish.append((finished - created).total_seconds() * 1000)
            time.sleep(1)
        result.lone_start_ms, result.lone_finish_ms = report.median(lone_start), report.median(lone_finish)

        cpu_before = self.cpu()
        ids = self.submit(runs, HELLO, org_id=3)
        self.wait_finished(ids)
        cpu_after = self.cpu()
        rows = self.times(ids)
        first = min(r[0] for r in rows)
        last_dispatched = max(r[1] for r in rows if r[1] is not None)
        last_finished = max(r[3] for r in rows if r[3] is not None)
        result.dispatch_rate = runs / max((last_dispatched - first).total_seconds(), 1e-3)
        result.finish_rate = runs / max((last_finished - first).total_seconds(), 1e-3)
        starts = [(r[2] - r[0]).total_seconds() * 1000 for r in rows if r[2] is not None]
        result.start_p50_ms, result.start_p90_ms = report.percentile(starts, 50), report.percentile(starts, 90)
        result.cpu_ms_per_run = {k: (cpu_after[k] - cpu_before.get(k, 0.0)) / runs * 1000 for k in cpu_after}

        big = self.submit(8 * hosts * self.cluster.topology.slots, SLEEPY, org_id=BIG_TEAM, owner="big@x")
        time.sleep(1)
        small = self.submit(1, SLEEPY, org_id=SMALL_TEAM, owner="small@x")
        self.wait_finished(big + small)
        small_row = self.times(small)[0]
        assert small_row[2] is not None
        result.small_wait_ms = (small_row[2] - small_row[0]).total_seconds() * 1000
        result.big_wait_p50_ms = report.median([(r[2] - r[0]).total_seconds() * 1000
                                                for r in self.times(big) if r[2] is not None])
        return result


def tables(results: list[Result], slots: int) -> str:
    lines = [
        "| hosts x dispatchers | burst | dispatch runs/s | finish runs/s | start p50 / p90 ms (burst) | "
        "lone run: start / finish ms | small team's run waits ms (big team p50) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r.hosts} x {r.dispatchers} | {r.runs} | {r.dispatch_rate:.1f} | {r.finish_rate:.1f} | "
                     f"{r.start_p50_ms:.0f} / {r.start_p90_ms:.0f} | {r.lone_start_ms:.0f} / {r.lone_finish_ms:.0f} | "
                     f"{r.small_wait_ms:.0f} ({r.big_wait_p50_ms:.0f}) |")
    lines += ["", "CPU per run in the burst (ms; runners not attributed) and idle dispatcher CPU:", "",
              "| hosts x dispatchers | dispatchers | APIs | Galera (3 nodes) | sandbox service per host | "
              "idle dispatchers ms/s |",
              "|---|---:|---:|---:|---|---:|"]
    for r in results:
        per_host = ", ".join(f"{r.cpu_ms_per_run.get(f'sandbox s{i + 1}', 0.0):.1f}" for i in range(r.hosts))
        lines.append(f"| {r.hosts} x {r.dispatchers} | {r.cpu_ms_per_run['dispatchers']:.1f} | "
                     f"{r.cpu_ms_per_run['APIs']:.1f} | {r.cpu_ms_per_run['Galera']:.1f} | {per_host} | "
                     f"{r.idle_dispatcher_ms_per_s:.1f} |")
    lines.append(f"\n{slots} slots per host; `print('hi')` runs; fair share: 8 runs per slot of `sleep(1)` by one "
                 "team, then one run by another.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="./dev bench cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per burst")
    parser.add_argument("--configs", default="1x1,2x1,3x1,1x2,2x2,3x2", help="HOSTSxDISPATCHERS, comma-separated")
    parser.add_argument("--slots", type=int, default=4, help="runs at once per sandbox host")
    args = parser.parse_args()
    configs = [tuple(int(n) for n in c.split("x")) for c in args.configs.split(",")]
    if any(not 1 <= h <= 3 or not 1 <= d <= 2 for h, d in configs):
        parser.error("--configs: hosts 1-3, dispatchers 1-2, e.g. 3x2")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped as by Ctrl-C: the cluster is removed
    load = os.getloadavg()
    topology = Topology(sandboxes=3, dispatchers=0, apis=2, slots=args.slots)
    cluster = Cluster(topology, say=print, extra_scheduler_env={"PYTHON_SCHEDULER_RATE_LIMIT_PERCENT": "1"})
    results = []
    try:
        cluster.start()
        bench = Bench(cluster)
        for hosts, dispatchers in configs:
            print(f"--- {hosts} host(s), {dispatchers} dispatcher(s)", flush=True)
            results.append(bench.measure(hosts, dispatchers, args.runs))
            print(tables(results[-1:], args.slots), flush=True)
    finally:
        cluster.stop()
    print(f"\n## Cluster: scaling over sandbox hosts and dispatchers\n\n{report.machine()}; load average before the "
          f"run {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.\nCommand: `./dev bench cluster --runs {args.runs}`. "
          "Galera 3 nodes (mariadb-server 10.11 + galera-4), sandbox hosts in network namespaces, 2 scheduler APIs.\n")
    print(tables(results, args.slots))
    return 0
