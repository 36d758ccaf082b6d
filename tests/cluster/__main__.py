"""./dev cluster: the whole cluster topology, started and shown, for a person to poke at; Ctrl-C stops it.

    ./dev cluster                 3 sandbox hosts, 2 dispatchers, 2 scheduler APIs, 3 Galera nodes
    ./dev cluster --sandboxes 1 --dispatchers 1
Everything runs until Ctrl-C (or SIGTERM), then is stopped and removed (namespaces, bridge, datadirs, runners).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

from tests.cluster.harness import Cluster, Topology


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--sandboxes", type=int, default=3, choices=range(1, 10), metavar="N")
    parser.add_argument("--dispatchers", type=int, default=2, choices=range(1, 10), metavar="N")
    parser.add_argument("--apis", type=int, default=2, choices=range(1, 10), metavar="N")
    parser.add_argument("--slots", type=int, default=4, help="runs at once per sandbox host")
    args = parser.parse_args(argv)
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
