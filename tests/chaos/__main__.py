"""`./dev chaos [--quick] [--only NAME ...] [--runs N]`: every fault under load, one table row each.

Exits 1 when a row misses the target (0 doubled, 0 lost, 0 stuck, 0 containers left, every run finished
with its own output or a clear failure text); the notes under the table say which runs and why.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

from tests.chaos.faults import FAULTS, QUICK, Plan, run_fault
from tests.chaos.harness import Chaos, Settings
from tests.chaos.load import Row, markdown
from tests.support.pipeline import REPO


def machine() -> str:
    cores = os.cpu_count()
    with open("/proc/meminfo") as meminfo:
        mem_gb = int(meminfo.readline().split()[1]) / 1024 / 1024
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    return f"{platform.node()}: {cores} cores, {mem_gb:.0f} GB, kernel {platform.release()}, commit {commit}"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick form: short holds, few runs, a subset")
    parser.add_argument("--only", nargs="*", default=None, help="fault names (or unique prefixes) to run")
    parser.add_argument("--runs", type=int, help="runs per fault (default 40, quick 6)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory with every log")
    args = parser.parse_args()
    faults = [f for f in FAULTS if not args.quick or f.name in QUICK]
    if args.only:
        faults = [f for f in faults if any(f.name.startswith(prefix) for prefix in args.only)]
        if not faults:
            print(f"chaos: no fault named {args.only}; known: {[f.name for f in FAULTS]}", file=sys.stderr)
            return 2
    if args.quick:
        settings, plan = Settings(slots=3, max_body_bytes=1 << 20), Plan(args.runs or 6, True, 300_000, 180)
    else:
        settings, plan = Settings(), Plan(args.runs or 40, False, 700_000, 300)
    rows: list[Row] = []
    chaos = Chaos(settings, say=say)
    say(f"chaos: {len(faults)} faults, {plan.runs} runs each; {machine()}")
    try:
        chaos.start()
        for number, fault in enumerate(faults, start=1):
            say(f"fault {number}/{len(faults)}: {fault.name} (seam: {fault.seam})")
            row = run_fault(chaos, fault, plan, org_id=9000 + number)
            rows.append(row)
            say(f"  {row.cells()}")
    finally:
        chaos.stop(keep_workdir=args.keep)
        if args.keep:
            say(f"logs kept in {chaos.workdir}")
    print(f"\n{time.strftime('%Y-%m-%d')}, {machine()}\n")
    print(markdown(rows))
    for row in rows:
        for note in row.notes:
            print(f"- {row.fault}: {note}")
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
