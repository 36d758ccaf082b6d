"""`seatable-scheduler`: one entry point for every scheduler process.

Subcommands are a table (`COMMANDS`); the dispatcher work adds `dispatch`, `maintain` and `run-local`
there, each a function taking the parsed arguments and the config.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication

from observability import logs
from sandbox.tls import gunicorn_settings
from scheduler import metrics_dir, systemd
from scheduler.config import Config, ConfigError


class SchedulerServer(BaseApplication):
    """gunicorn configured in code; each worker builds its own app (and database connections)."""

    def __init__(self, config: Config, overrides: dict[str, Any] | None = None) -> None:
        self.config = config
        self.overrides = overrides or {}
        super().__init__()

    def load_config(self) -> None:
        settings: dict[str, Any] = {
            "bind": [f"{self.config.bind_host}:{self.config.port}"],
            "workers": self.config.workers,
            # gthread keeps connections alive (dtable-web polls) and lets a slow query not block a worker;
            # this one reads request heads in its event loop, so slow clients hold no thread (httpworker).
            "worker_class": "httpworker.HeadFirstWorker",
            "threads": self.config.threads,
            "keepalive": 30,
            "timeout": 60,
            "graceful_timeout": 30,
            "backlog": 2048,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": self.config.log_level.lower(),
            "logger_class": "observability.logs.GunicornLogger",
            "proc_name": "seatable-scheduler",
            "preload_app": False,
            "limit_request_line": 8190,
            **gunicorn_settings(*self.config.tls, self.config.tls_client_ca),
            # gunicorn 27's control socket (~/.gunicorn/gunicorn.ctl) can stop and reconfigure the server; the
            # services are managed by their supervisor (systemd, compose), so it stays off.
            "control_socket_disable": True,
            # /metrics: a dead worker's live gauges leave the sums; this start's directory goes with the master.
            "child_exit": lambda server, worker: metrics_dir.worker_exited(worker.pid),
            "on_exit": lambda server: metrics_dir.remove_multiprocess_dir(),
        }
        settings.update(self.overrides)
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from scheduler.app import create_app

        return create_app(self.config)


def serve(args: argparse.Namespace, config: Config) -> int:
    config.require_auth_token()
    config.require_service_database()
    overrides: dict[str, Any] = {}
    if args.bind:
        overrides["bind"] = [args.bind]
    if args.workers:
        overrides["workers"] = args.workers
    if args.access_log:
        overrides["accesslog"] = "-"
    if args.migrate:
        migrate(args, config)
    metrics_dir.prepare_multiprocess_dir()
    # The app's modules once, here in the master (after the metrics directory: prometheus_client picks its value
    # class at import): every worker forks with them loaded and only builds its own app, connections and metrics.
    import scheduler.app  # noqa: F401

    SchedulerServer(config, overrides).run()
    return 0


def migrate(args: argparse.Namespace, config: Config) -> int:
    from scheduler.db import run_migrate

    changes = run_migrate(config)
    for change in changes:
        print(f"migrate: {change}")
    if not changes:
        print("migrate: schema is up to date")
    return 0


def _on_sigterm(*stoppers: Callable[[], None]) -> None:
    """SIGTERM and SIGINT stop the loops gracefully; a second signal does not kill a hand-off midway."""

    def handler(signum: int, frame: Any) -> None:
        logging.getLogger("scheduler.cli").info("signal %d: stopping", signum)
        for stop in stoppers:
            stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def dispatch(args: argparse.Namespace, config: Config) -> int:
    from scheduler.db import open_store
    from scheduler.dispatcher import Dispatcher, test_pause
    from scheduler.maintenance import Maintenance
    from scheduler.nodes import Nodes
    from scheduler.queue import read_committed
    from scheduler.seatable import SeaTable

    config.require_dispatch_settings()
    store = open_store(config)
    read_committed(store)
    nodes = Nodes.from_config(config)
    dispatcher = Dispatcher(
        config,
        store,
        SeaTable(config.seatable_server_url, config.auth_token),
        nodes,
        pause=test_pause(config.dispatch_test_pause),
    )
    stoppers = [dispatcher.stop]
    maintainer: threading.Thread | None = None
    if args.maintain:
        maintenance = Maintenance(config, store, Nodes.from_config(config))
        maintainer = threading.Thread(target=maintenance.run, name="maintenance", daemon=True)
        stoppers.append(maintenance.stop)
    _on_sigterm(*stoppers)
    if maintainer is not None:
        maintainer.start()
    dispatcher.run()
    if maintainer is not None:
        maintainer.join(timeout=30)
    store.disconnect()
    return 0


def maintain(args: argparse.Namespace, config: Config) -> int:
    from scheduler.db import open_store
    from scheduler.maintenance import Maintenance
    from scheduler.nodes import Nodes
    from scheduler.queue import read_committed

    config.require_auth_token()
    store = open_store(config)
    read_committed(store)
    maintenance = Maintenance(config, store, Nodes.from_config(config))
    if args.once:
        print(f"sweep: {maintenance.sweep_handed_off()}")
        print(f"stale runs ended: {maintenance.end_stale()}")
        print(f"retention: {maintenance.retention()}")
        return 0
    _on_sigterm(maintenance.stop)
    maintenance.run()
    store.disconnect()
    return 0


def _run_local_arguments(parser: argparse.ArgumentParser) -> None:
    from sandbox import local

    local.add_arguments(parser)


def run_local(args: argparse.Namespace, config: Config) -> int:
    """The sandbox's run-local, here too: script authors know this command's name from upstream's docs."""
    from sandbox import local

    return local.command(args)


def _dispatch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--maintain", action="store_true", help="also run the maintenance sweeps in this process")


def _maintain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="one sweep and one retention pass, then exit")


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", help="host:port, overrides PYTHON_SCHEDULER_BIND_HOST/PORT")
    parser.add_argument("--workers", type=int, help="overrides PYTHON_SCHEDULER_WORKERS")
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    parser.add_argument("--migrate", action="store_true", help="run migrate before serving")


# name -> (help, argument setup, handler)
COMMANDS: dict[
    str,
    tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace, Config], int]],
] = {
    "serve": ("serve the HTTP API under gunicorn", _serve_arguments, serve),
    "migrate": ("create or upgrade the database schema (idempotent)", lambda parser: None, migrate),
    "dispatch": ("claim pending runs and hand them to sandbox nodes", _dispatch_arguments, dispatch),
    "maintain": ("end lost and stale runs, delete old logs and statistics", _maintain_arguments, maintain),
    "run-local": ("run one script through a real runner, without SeaTable", _run_local_arguments, run_local),
    "install-systemd": ("write the systemd units (API, dispatcher, maintenance timer)", systemd.add_arguments,
                        systemd.command),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seatable-scheduler", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, handler) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text)
        add_arguments(sub)
        sub.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = Config.from_env()
        logs.configure(config.log_level, config.log_format, config.log_to_stdout)
        result: int = args.handler(args, config)
        return result
    except ConfigError as exc:
        print(f"seatable-scheduler: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
