"""`python -m tests.seatable_stub --host H --port N --secret S [--scheduler-url URL --scheduler-token T]`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from .app import create_app
from .config import StubConfig
from .server import make_stub_server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m tests.seatable_stub",
                                     description="SeaTable stand-in server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--secret", required=True, help="the shared secret (PYTHON_SCHEDULER_AUTH_TOKEN)")
    parser.add_argument("--scheduler-url", help="scheduler base URL, enables POST /_stub/runs")
    parser.add_argument("--scheduler-token", help="token for the scheduler (default: --secret)")
    parser.add_argument("--poll-interval", type=float, default=2.0, help="seconds between run status polls")
    parser.add_argument("--allow-remote-control", action="store_true",
                        help="serve /_stub/ to non-loopback clients")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; prints `seatable-stub listening on URL` once bound."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s seatable-stub %(message)s")
    config = StubConfig(
        secret=args.secret,
        scheduler_url=args.scheduler_url,
        scheduler_token=args.scheduler_token or (args.secret if args.scheduler_url else None),
        poll_interval=args.poll_interval,
        control_loopback_only=not args.allow_remote_control,
    )
    server = make_stub_server(create_app(config), args.host, args.port)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    host, port = str(server.server_address[0]), int(server.server_address[1])
    print(f"seatable-stub listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
