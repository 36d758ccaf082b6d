"""Where the full test suite's CPU goes: `./dev test` under process accounting, split by what ran.

Run as root: `./dev bench suite_cpu [--no-write] [--by-file] [-- PYTEST ARGS]`. The suite runs in parallel workers on
a machine it keeps busy, so its wall time follows its CPU: this names the processes to make cheaper or start less often.
Every process that exits during the run is counted by the kernel (BSD acct v3: uid, 16-byte command name, CPU),
runners by their uid (the sandbox user's subordinate range), whatever their pid namespace; the sandbox user's
long-lived Podman service by its own counters; the rest of the machine's busy time is "not placed" (kernel
threads, processes that outlive the run, other sessions). A record carries no command line, so one is sampled
each second for every process (pytest's workers, the services): a Python process too short-lived to be seen
counts as "other Python".

`--by-file` runs the suite in one worker instead and prints the machine's busy CPU and the wall time per test file
(`bench/per_file_cpu.py`): which files to make cheaper. It takes about twice as long and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench.cpu_split import Accounting, Exited, busy_seconds, own_seconds, podman_service_pids, subuid_range
from bench.report import machine, update_section
from sandbox.host import configured_user, lookup_user

REPO = Path(__file__).resolve().parent.parent
NOT_PLACED = "not placed (kernel threads, processes that outlive the run, other sessions)"
IMAGE_BUILDS = ("mmdebstrap", "apt-get", "apt", "dpkg", "dpkg-deb", "dpkg-split", "tar", "gzip", "xz", "zstd",
                "http", "gpgv", "sqv", "pip", "buildah", "podman-compose", "cp", "sh", "bash", "find", "cat")


# What a Python process is, from its command line (seen by the sampler while it lived): the first match names it.
PYTHON_ROLES = (
    (("pytest", "exec(eval(sys.stdin.readline()))"), "pytest (controller and workers: in-process tests, fixtures)"),
    (("seatable-sandbox",), "sandbox services and CLI (as root: host-setup, build-runner, run-local)"),
    (("scheduler.cli", "seatable-scheduler", "dispatch"), "scheduler services (API, dispatcher, maintenance, CLI)"),
    (("mypy", "ruff"), "./dev's lint (ruff, mypy)"),
)
PYTHON_OTHER = "other Python processes the tests start (stand-ins, harnesses, helpers, short-lived ones)"


class CommandLines:
    """Samples the command line of every process once a second while the suite runs: acct records have none."""

    def __init__(self) -> None:
        self.seen: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            for proc in psutil.process_iter(["cmdline"]):
                if proc.pid not in self.seen and proc.info["cmdline"]:
                    self.seen[proc.pid] = " ".join(proc.info["cmdline"])[:300]

    def __enter__(self) -> CommandLines:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def classify(record: Exited, sandbox_uid: int, runners: range, command: str) -> str:
    """The row of the table a process belongs to (`command`: its sampled command line, or "")."""
    comm = record.comm
    if record.uid in runners:
        return "runners (entrypoint, scripts and their children)"
    if record.uid == sandbox_uid:
        if comm.startswith("seatable-sandbo"):
            return "sandbox services (gunicorn master and worker, as the sandbox user)"
        if comm == "dpkg-query":
            return "dpkg-query as the sandbox user (Podman's `info` looks up package versions)"
        if comm in ("podman", "conmon", "exe", "slirp4netns", "catatonit") or comm.startswith("runc"):
            return "Podman CLI, conmon, runc, slirp4netns (the sandbox user)"
        return "the sandbox user's other processes"
    if comm.startswith(("python", "seatable-", "gunicorn", "mypy", "pytest")):
        return next((role for needles, role in PYTHON_ROLES if any(n in command for n in needles)), PYTHON_OTHER)
    if comm in ("mariadbd", "mysqld", "mariadb-install", "mysql_install_d"):
        return "MariaDB servers"
    if comm in ("schemathesis", "chromium", "chrome", "node-MainThread", "HangWatcher") or comm.startswith("Chrome"):
        return "schemathesis and the browser tests (chromium)"
    if comm in IMAGE_BUILDS or comm.startswith(("apt", "dpkg", "podman")):
        return "image builds, compose and their tools (as root and the deployment users)"
    return "other exited processes"


def _cpu(pid: int) -> float:
    try:
        return own_seconds(psutil.Process(pid))
    except psutil.Error:
        return 0.0


def run_suite(pytest_args: list[str]) -> tuple[int, float, dict[str, tuple[float, int]], float, float]:
    """./dev test under accounting: its exit code, wall seconds, CPU and process count per row, the Podman
    service's CPU and the whole machine's busy seconds."""
    user = lookup_user(configured_user())
    before = {pid: _cpu(pid) for pid in podman_service_pids(user.uid)}
    busy, started = busy_seconds(), time.monotonic()
    with Accounting() as accounting, CommandLines() as commands:
        code = subprocess.run([str(REPO / "dev"), "test", *pytest_args], cwd=REPO, check=False).returncode
    wall, busy = time.monotonic() - started, busy_seconds() - busy
    # A service restarted by a test: the old one's exit is in the records (as `podman`), the new one counts from 0.
    podman = sum(_cpu(pid) - before.get(pid, 0.0) for pid in podman_service_pids(user.uid))
    rows: dict[str, tuple[float, int]] = {}
    runners = subuid_range(user.name)
    for record in accounting.records:
        name = classify(record, user.uid, runners, commands.seen.get(record.pid, ""))
        cpu, count = rows.get(name, (0.0, 0))
        rows[name] = (cpu + record.cpu, count + 1)
    return code, wall, rows, podman, busy


def render(code: int, wall: float, rows: dict[str, tuple[float, int]], podman: float, busy: float,
           pytest_args: list[str], commit: str) -> str:
    cores = os.cpu_count() or 1
    lines = [f"{machine()}; commit {commit}.",
             f"Command: `./dev bench suite_cpu{' -- ' + ' '.join(pytest_args) if pytest_args else ''}` "
             f"(`./dev test` exited {code}); wall {wall:.0f} s, the machine busy {busy:.0f} CPU s of "
             f"{wall * cores:.0f} ({busy / (wall * cores):.0%}).", "",
             "| what ran | CPU s | share | processes |", "|---|---:|---:|---:|"]
    placed = sum(cpu for cpu, _ in rows.values()) + podman
    table = sorted(rows.items(), key=lambda item: -item[1][0])
    table.insert(next((i for i, (_, (cpu, _n)) in enumerate(table) if cpu < podman), len(table)),
                 ("the sandbox user's Podman API service (long-lived, its own counters)", (podman, 0)))
    for name, (cpu, count) in table:
        lines.append(f"| {name} | {cpu:.0f} | {cpu / busy:.0%} | {count or ''} |")
    lines.append(f"| {NOT_PLACED} | {busy - placed:.0f} | {(busy - placed) / busy:.0%} | |")
    lines.append(f"| whole machine | {busy:.0f} | 100% | |")
    return "\n".join(lines)


def by_file(pytest_args: list[str], top: int = 30) -> int:
    """The suite in one worker with bench/per_file_cpu.py: a table of the test files that cost the most CPU."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        started = time.monotonic()
        code = subprocess.run([str(REPO / "dev"), "test", "-n", "1", "-p", "bench.per_file_cpu", *pytest_args],
                              cwd=REPO, env={**os.environ, "SUITE_CPU_BY_FILE": out.name}, check=False).returncode
        wall = time.monotonic() - started
        text = Path(out.name).read_text()
    seen: dict[str, list[float]] = json.loads(text) if text else {}
    total = sum(cpu for cpu, _, _ in seen.values()) or 1.0
    print(f"{machine()}; `./dev test -n 1` exited {code} after {wall:.0f} s; the machine's busy CPU while each "
          f"file's tests ran (fixtures' set-up with the first test that asks for them)\n")
    print("| test file | CPU s | share | wall s | tests |\n|---|---:|---:|---:|---:|")
    for name, (cpu, spent, tests) in sorted(seen.items(), key=lambda item: -item[1][0])[:top]:
        print(f"| {name} | {cpu:.0f} | {cpu / total:.0%} | {spent:.0f} | {tests:.0f} |")
    print(f"| all {len(seen)} files | {total:.0f} | 100% | {sum(v[1] for v in seen.values()):.0f} | "
          f"{sum(v[2] for v in seen.values()):.0f} |")
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--by-file", action="store_true", help="one worker; CPU and wall time per test file")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to ./dev test")
    args = parser.parse_args()
    if args.by_file:
        return by_file(args.pytest_args)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=False).stdout.strip() or "unknown"
    code, wall, rows, podman, busy = run_suite(args.pytest_args)
    body = render(code, wall, rows, podman, busy, args.pytest_args, commit)
    print(body)
    if not args.no_write:
        update_section("Test suite: where its CPU goes", body)
    return code
