"""./dev cluster: the whole cluster topology, started and shown, for a person to poke at; Ctrl-C stops it.

    ./dev cluster                 3 sandbox hosts, 2 dispatchers, 2 scheduler APIs, 3 Galera nodes
    ./dev cluster --sandboxes 1 --dispatchers 1
    ./dev cluster --faults        the full form of the cluster's faults (tests/cluster/test_faults.py is the quick
                                  one): a burst of 2,000 runs, then each fault under 60 runs; one table row each
Everything runs until Ctrl-C (or SIGTERM), then is stopped and removed (namespaces, bridge, datadirs, runners).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from bench import report
from tests.cluster.faults import FAULTS, Plan, run_fault
from tests.cluster.harness import Cluster, Topology
from tests.cluster.load import ClusterRow, markdown


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def faults(args: argparse.Namespace) -> int:
    """Every fault of FAULTS on one cluster, the default timing; exit 1 when a row misses the target."""
    topology = Topology(sandboxes=args.sandboxes, dispatchers=args.dispatchers, apis=args.apis, slots=args.slots)
    plan = Plan(runs=args.runs, burst=args.burst, quick=False, settle_secs=1800)
    chosen = [f for f in FAULTS if not args.only or any(f.name.startswith(p) for p in args.only)]
    if not chosen:
        print(f"cluster: no fault named {args.only}; known: {[f.name for f in FAULTS]}", file=sys.stderr)
        return 2
    rows: list[ClusterRow] = []
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped as by Ctrl-C: everything is removed
    load = os.getloadavg()
    cluster = Cluster(topology, say=say, extra_scheduler_env={"PYTHON_SCHEDULER_RATE_LIMIT_PERCENT": "1"})
    try:
        cluster.start()
        for number, fault in enumerate(chosen, start=1):
            say(f"fault {number}/{len(chosen)}: {fault.name}")
            row = run_fault(cluster, fault, plan, org_id=8000 + number)
            rows.append(row)
            say(f"  {row.cells()}")
    finally:
        cluster.stop(keep_workdir=args.keep)
        if args.keep:
            say(f"logs kept in {cluster.workdir}")
    print(f"\n## Cluster faults\n\n{report.machine()}; load average before {load[0]:.1f} / {load[1]:.1f} / "
          f"{load[2]:.1f}.\nCommand: `./dev cluster --faults --runs {args.runs} --burst {args.burst}`.\n")
    print(markdown(rows))
    for row in rows:
        for note in row.notes:
            print(f"- {row.fault}: {note}")
    return 0 if all(row.ok for row in rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--sandboxes", type=int, default=3, choices=range(1, 10), metavar="N")
    parser.add_argument("--dispatchers", type=int, default=2, choices=range(1, 10), metavar="N")
    parser.add_argument("--apis", type=int, default=2, choices=range(1, 10), metavar="N")
    parser.add_argument("--slots", type=int, default=4, help="runs at once per sandbox host")
    parser.add_argument("--faults", action="store_true", help="run the faults under load instead, then stop")
    parser.add_argument("--runs", type=int, default=60, help="--faults: runs per fault")
    parser.add_argument("--burst", type=int, default=2000, help="--faults: runs in the no-fault burst")
    parser.add_argument("--only", nargs="*", default=None, help="--faults: fault names (or prefixes) to run")
    parser.add_argument("--keep", action="store_true", help="--faults: keep the work directory with every log")
    args = parser.parse_args(argv)
    if args.faults:
        return faults(args)
    topology = Topology(sandboxes=args.sandboxes, dispatchers=args.dispatchers, apis=args.apis, slots=args.slots)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = time.monotonic()
    cluster = Cluster(topology, say=print)
    try:
        cluster.start()
        print(f"\ncluster up in {time.monotonic() - started:.0f} s:\n")
        print(cluster.describe())
        print("\nTry: curl -H 'Authorization: Token <token>' <API>/admin/runs/   ... Ctrl-C stops everything.")
        stop.wait()
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping the cluster")
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
