"""./dev bench NAME [args]: run one benchmark module of this package."""

import importlib
import sys

if len(sys.argv) < 2:
    print("usage: ./dev bench sandbox_overhead|scheduler_wrk|dispatch_throughput|egress_throughput|runner_mount"
          "|slow_clients|runner_identity|image_sizes|pipeline|cluster|suite_cpu [args]", file=sys.stderr)
    raise SystemExit(2)
module = importlib.import_module(f"bench.{sys.argv[1]}")
sys.argv = [f"bench {sys.argv[1]}", *sys.argv[2:]]
raise SystemExit(module.main())
