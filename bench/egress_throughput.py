"""Egress throughput: one 50 MB download direct vs through the runner's forwarder and the host proxy.

Both run in this process against an origin in its own process, interleaved, best of N each:
`./dev bench egress_throughput [--rounds 5]`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

from bench.report import machine
from tests.sandbox.test_egress import BIG, ROOT, Env, download


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from tests.sandbox.test_egress import Server; "
            "print(Server('big').port, flush=True); time.sleep(3600)")
    origin = subprocess.Popen([sys.executable, "-c", code, str(ROOT)], stdout=subprocess.PIPE, text=True)
    env = Env()
    try:
        assert origin.stdout is not None
        port = int(origin.stdout.readline())
        proxies = env.forwarder(env.run("seatable", f"127.0.0.1:{port}"))
        url = f"http://127.0.0.1:{port}/big"
        direct, proxied = [], []
        for _ in range(args.rounds):
            direct.append(download(url, None))
            proxied.append(download(url, proxies))
    finally:
        origin.kill()
        env.proxy.shutdown()
        shutil.rmtree(env.base)
    print(machine())
    print(f"{BIG // 1_000_000} MB download, best of {args.rounds} (MB/s)")
    print("| path | best | worst |")
    print("|---|---|---|")
    print(f"| direct | {max(direct):.0f} | {min(direct):.0f} |")
    print(f"| forwarder + egress proxy | {max(proxied):.0f} | {min(proxied):.0f} |")
    print(f"ratio (best): {max(proxied) / max(direct):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
