"""Scheduler configuration, read once from the environment.

Variable names and defaults follow upstream's scheduler wherever upstream had one, so an existing
SeaTable deployment can point at this scheduler without renaming anything. `VARIABLES` is the single
table of every variable; the README table is checked against it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class ConfigError(ValueError):
    """An environment variable holds a value the scheduler cannot use."""


class Variable(NamedTuple):
    name: str
    default: str
    description: str


VARIABLES: tuple[Variable, ...] = (
    Variable(
        "PYTHON_SCHEDULER_AUTH_TOKEN",
        "",
        "Shared secret with SeaTable (required); `Token`/`Bearer` auth. Only scheduler hosts hold it.",
    ),
    Variable(
        "PYTHON_SCHEDULER_PREVIOUS_AUTH_TOKENS",
        "",
        "More secrets SeaTable may call with while PYTHON_SCHEDULER_AUTH_TOKEN is rotated (comma-separated).",
    ),
    Variable("SEATABLE_SERVER_URL", "", "Base URL of dtable-web, for scripts-running-limit and task files."),
    Variable(
        "PYTHON_SCHEDULER_URL",
        "http://127.0.0.1:5055",
        "URL under which sandboxes reach this scheduler's callbacks (read by the sandbox; same default).",
    ),
    Variable("DB_HOST", "", "MariaDB/MySQL host; empty selects the embedded SQLite database."),
    Variable("DB_PORT", "3306", "MariaDB/MySQL port."),
    Variable("DB_USER", "", "Database user (used when DB_ROOT_PASSWD is empty)."),
    Variable("DB_PASSWD", "", "Password of DB_USER."),
    Variable("DB_ROOT_USER", "root", "Privileged database user, preferred when DB_ROOT_PASSWD is set."),
    Variable("DB_ROOT_PASSWD", "", "Password of DB_ROOT_USER."),
    Variable("DATABASE_NAME", "scheduler", "Database (schema) name on MariaDB/MySQL."),
    Variable(
        "PYTHON_SCHEDULER_SQLITE_PATH",
        "/var/lib/seatable-scheduler/scheduler.sqlite3",
        "SQLite file used when DB_HOST is empty.",
    ),
    Variable(
        "PYTHON_PROCESS_TIMEOUT",
        "60",
        "Time limit of one run in seconds; one default in both services: 60, as SeaTable's release compose "
        "sets it for its scheduler and starter alike (upstream's code says 900).",
    ),
    Variable("DELETE_LOG_DAYS", "30", "Days after which script_log rows are deleted."),
    Variable("DELETE_STATISTICS_DAYS", "90", "Days after which statistics rows are deleted."),
    Variable("PYTHON_SCHEDULER_WINDOW_SECS", "300", "Rate-limit window in seconds."),
    Variable("PYTHON_SCHEDULER_RATE_LIMIT_PERCENT", "0.25", "Share of the window's capacity one team may use."),
    Variable("PYTHON_STARTER_TOTAL_THREAD_COUNT", "10", "Total run slots over all sandboxes (rate limit base)."),
    Variable("TIME_ZONE", "", "IANA time zone of stored timestamps and API output; empty: the host's."),
    Variable("PYTHON_SCHEDULER_BIND_HOST", "127.0.0.1", "Address the API listens on."),
    Variable("PYTHON_SCHEDULER_PORT", "5055", "Port the API listens on (the container image: 80, SeaTable's default)."),
    Variable("PYTHON_SCHEDULER_TLS_CERT", "", "PEM certificate (chain) to serve HTTPS with (with the key below)."),
    Variable("PYTHON_SCHEDULER_TLS_KEY", "", "PEM private key of PYTHON_SCHEDULER_TLS_CERT."),
    Variable(
        "PYTHON_SCHEDULER_TLS_CLIENT_CA",
        "",
        "PEM CA bundle: with it every client must present a certificate it signed (SeaTable cannot: see TLS).",
    ),
    Variable("PYTHON_SCHEDULER_WORKERS", "2", "gunicorn worker processes."),
    Variable("PYTHON_SCHEDULER_THREADS", "8", "Threads per gunicorn worker (gthread)."),
    Variable(
        "PYTHON_SCHEDULER_ACCEPT_UNAUTHENTICATED_CALLBACKS",
        "false",
        "true: accept result/running callbacks without the run's callback secret (old upstream starters); "
        "the state checks still apply.",
    ),
    Variable("PYTHON_SCHEDULER_MAX_BODY_BYTES", "8388608", "Largest request body accepted (413 above)."),
    Variable("PYTHON_SCHEDULER_LOG_LEVEL", "INFO", "Log level (DEBUG, INFO, WARNING, ERROR)."),
    Variable("PYTHON_SANDBOX_URLS", "http://127.0.0.1:8088", "Comma list of sandbox nodes runs are handed to."),
    Variable(
        "PYTHON_SANDBOX_AUTH_TOKEN",
        "",
        "Token sent to the sandbox nodes that have none of their own in PYTHON_SANDBOX_NODE_TOKENS.",
    ),
    Variable(
        "PYTHON_SANDBOX_NODE_TOKENS",
        "",
        "Each node's own token: `URL=TOKEN` pairs (comma-separated, URLs as in PYTHON_SANDBOX_URLS); "
        "`dispatch` needs a token for every node, from here or PYTHON_SANDBOX_AUTH_TOKEN.",
    ),
    Variable(
        "PYTHON_SANDBOX_CA_BUNDLE", "", "PEM CA bundle that verifies https:// sandbox nodes; empty: the system's."
    ),
    Variable(
        "PYTHON_DISPATCH_TLS_CERT",
        "",
        "PEM client certificate the dispatcher presents to nodes that require one (with PYTHON_DISPATCH_TLS_KEY).",
    ),
    Variable("PYTHON_DISPATCH_TLS_KEY", "", "PEM private key of PYTHON_DISPATCH_TLS_CERT."),
    Variable("PYTHON_DISPATCH_BATCH", "50", "Most runs claimed per transaction (and never more than free slots)."),
    Variable("PYTHON_DISPATCH_THREADS", "16", "Parallel task-file fetches and hand-offs per dispatcher."),
    Variable("PYTHON_DISPATCH_LEASE_SECS", "30", "A claim not handed off within this time returns to the queue."),
    Variable(
        "PYTHON_DISPATCH_HANDOFF_SECS",
        "60",
        'After this long a node\'s "not here" proves a hand-off never arrived (no POST still in flight).',
    ),
    Variable(
        "PYTHON_SANDBOX_LOST_GRACE_SECS",
        "60",
        'A run whose node does not answer for PYTHON_PROCESS_TIMEOUT plus this long ends as "sandbox lost".',
    ),
    Variable(
        "PYTHON_SCHEDULER_QUEUE_TIMEOUT",
        "3600",
        "Queued longer than this: ended as not started; 0 never.",
    ),
    Variable("PYTHON_SWEEP_INTERVAL_SECS", "5", "How often `maintain` asks the nodes about runs handed to them."),
    Variable(
        "PYTHON_RETENTION_INTERVAL_SECS",
        "3600",
        "How often old logs and statistics are deleted.",
    ),
    Variable("PYTHON_RETENTION_BATCH", "1000", "Rows deleted per transaction by the retention sweep."),
)

_DEFAULTS = {v.name: v.default for v in VARIABLES}


def _int(env: Mapping[str, str], name: str, minimum: int = 0) -> int:
    raw = env.get(name, _DEFAULTS[name]).strip()
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str) -> float:
    raw = env.get(name, _DEFAULTS[name]).strip()
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not 0 <= value <= 1:
        raise ConfigError(f"{name} must be between 0 and 1, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, _DEFAULTS[name]).strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _str(env: Mapping[str, str], name: str) -> str:
    return env.get(name, _DEFAULTS[name]).strip()


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(part for part in re.split(r"[\s,]+", _str(env, name)) if part)


def _file(env: Mapping[str, str], name: str) -> str:
    path = _str(env, name)
    if path and not os.access(path, os.R_OK):
        raise ConfigError(f"{name}={path}: cannot read it")
    return path


def _pair(env: Mapping[str, str], cert: str, key: str) -> tuple[str, str]:
    pair = _file(env, cert), _file(env, key)
    if bool(pair[0]) != bool(pair[1]):
        raise ConfigError(f"{cert} and {key} go together: set both or neither")
    return pair


def _node_tokens(env: Mapping[str, str], urls: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """PYTHON_SANDBOX_NODE_TOKENS as (url, token) pairs, each url one of PYTHON_SANDBOX_URLS."""
    pairs = []
    for entry in _list(env, "PYTHON_SANDBOX_NODE_TOKENS"):
        url, sep, token = entry.rpartition("=")
        url = url.rstrip("/")
        if not sep or not url or not token:
            raise ConfigError("PYTHON_SANDBOX_NODE_TOKENS entries look like URL=TOKEN")
        if url not in urls:
            raise ConfigError(f"PYTHON_SANDBOX_NODE_TOKENS names {url}, which is not in PYTHON_SANDBOX_URLS")
        pairs.append((url, token))
    if len({url for url, _ in pairs}) != len(pairs):
        raise ConfigError("PYTHON_SANDBOX_NODE_TOKENS names a node twice")
    return tuple(pairs)


def _urls(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    urls = tuple(u.strip().rstrip("/") for u in _str(env, name).split(",") if u.strip())
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{name} holds a URL without http:// or https://: {url!r}")
    if len(set(urls)) != len(urls):
        raise ConfigError(f"{name} names a node twice")
    return urls


@dataclass(frozen=True)
class Config:
    auth_token: str = field(default="", repr=False)
    previous_auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    seatable_server_url: str = ""
    scheduler_url: str = "http://127.0.0.1:5055"
    db_host: str = ""
    db_port: int = 3306
    db_user: str = "root"
    db_passwd: str = field(default="", repr=False)
    database_name: str = "scheduler"
    sqlite_path: str = _DEFAULTS["PYTHON_SCHEDULER_SQLITE_PATH"]
    process_timeout: int = 60
    delete_log_days: int = 30
    delete_statistics_days: int = 90
    window_secs: int = 300
    rate_limit_percent: float = 0.25
    total_thread_count: int = 10
    time_zone: str = ""
    bind_host: str = "127.0.0.1"
    port: int = 5055
    workers: int = 2
    threads: int = 8
    accept_unauthenticated_callbacks: bool = False
    max_body_bytes: int = 8 * 1024 * 1024
    log_level: str = "INFO"
    sandbox_urls: tuple[str, ...] = ("http://127.0.0.1:8088",)
    sandbox_auth_token: str = field(default="", repr=False)
    node_tokens: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    sandbox_ca_bundle: str = ""
    dispatch_tls: tuple[str, str] = ("", "")  # client certificate and key presented to the nodes
    tls: tuple[str, str] = ("", "")  # certificate and key the API serves HTTPS with
    tls_client_ca: str = ""
    dispatch_batch: int = 50
    dispatch_threads: int = 16
    lease_secs: int = 30
    handoff_secs: int = 60
    lost_grace_secs: int = 60
    queue_timeout: int = 3600
    sweep_interval: int = 5
    retention_interval: int = 3600
    retention_batch: int = 1000

    @property
    def uses_mysql(self) -> bool:
        return bool(self.db_host)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = os.environ if environ is None else environ
        # Upstream's credential rule: the root account when its password is given, else DB_USER.
        root_passwd = _str(env, "DB_ROOT_PASSWD")
        if root_passwd:
            user, passwd = _str(env, "DB_ROOT_USER") or "root", root_passwd
        elif _str(env, "DB_USER") and _str(env, "DB_PASSWD"):
            user, passwd = _str(env, "DB_USER"), _str(env, "DB_PASSWD")
        else:
            user, passwd = _str(env, "DB_USER") or "root", _str(env, "DB_PASSWD")
        time_zone = _str(env, "TIME_ZONE")
        if time_zone:
            try:
                ZoneInfo(time_zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ConfigError(f"TIME_ZONE is not a known IANA time zone: {time_zone!r}") from None
        sandbox_urls = _urls(env, "PYTHON_SANDBOX_URLS")
        tls = _pair(env, "PYTHON_SCHEDULER_TLS_CERT", "PYTHON_SCHEDULER_TLS_KEY")
        tls_client_ca = _file(env, "PYTHON_SCHEDULER_TLS_CLIENT_CA")
        if tls_client_ca and not tls[0]:
            raise ConfigError("PYTHON_SCHEDULER_TLS_CLIENT_CA needs PYTHON_SCHEDULER_TLS_CERT and _KEY")
        log_level = _str(env, "PYTHON_SCHEDULER_LOG_LEVEL").upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"PYTHON_SCHEDULER_LOG_LEVEL is not a log level: {log_level!r}")
        return cls(
            auth_token=_str(env, "PYTHON_SCHEDULER_AUTH_TOKEN"),
            previous_auth_tokens=_list(env, "PYTHON_SCHEDULER_PREVIOUS_AUTH_TOKENS"),
            seatable_server_url=_str(env, "SEATABLE_SERVER_URL").rstrip("/"),
            scheduler_url=_str(env, "PYTHON_SCHEDULER_URL").rstrip("/"),
            db_host=_str(env, "DB_HOST"),
            db_port=_int(env, "DB_PORT", 1),
            db_user=user,
            db_passwd=passwd,
            database_name=_str(env, "DATABASE_NAME"),
            sqlite_path=_str(env, "PYTHON_SCHEDULER_SQLITE_PATH"),
            process_timeout=_int(env, "PYTHON_PROCESS_TIMEOUT", 1),
            delete_log_days=_int(env, "DELETE_LOG_DAYS", 1),
            delete_statistics_days=_int(env, "DELETE_STATISTICS_DAYS", 1),
            window_secs=_int(env, "PYTHON_SCHEDULER_WINDOW_SECS", 1),
            rate_limit_percent=_float(env, "PYTHON_SCHEDULER_RATE_LIMIT_PERCENT"),
            total_thread_count=_int(env, "PYTHON_STARTER_TOTAL_THREAD_COUNT", 1),
            time_zone=time_zone,
            bind_host=_str(env, "PYTHON_SCHEDULER_BIND_HOST"),
            port=_int(env, "PYTHON_SCHEDULER_PORT", 1),
            workers=_int(env, "PYTHON_SCHEDULER_WORKERS", 1),
            threads=_int(env, "PYTHON_SCHEDULER_THREADS", 1),
            accept_unauthenticated_callbacks=_bool(env, "PYTHON_SCHEDULER_ACCEPT_UNAUTHENTICATED_CALLBACKS"),
            max_body_bytes=_int(env, "PYTHON_SCHEDULER_MAX_BODY_BYTES", 1024),
            log_level=log_level,
            sandbox_urls=sandbox_urls,
            sandbox_auth_token=_str(env, "PYTHON_SANDBOX_AUTH_TOKEN"),
            node_tokens=_node_tokens(env, sandbox_urls),
            sandbox_ca_bundle=_file(env, "PYTHON_SANDBOX_CA_BUNDLE"),
            dispatch_tls=_pair(env, "PYTHON_DISPATCH_TLS_CERT", "PYTHON_DISPATCH_TLS_KEY"),
            tls=tls,
            tls_client_ca=tls_client_ca,
            dispatch_batch=_int(env, "PYTHON_DISPATCH_BATCH", 1),
            dispatch_threads=_int(env, "PYTHON_DISPATCH_THREADS", 1),
            lease_secs=_int(env, "PYTHON_DISPATCH_LEASE_SECS", 1),
            handoff_secs=_int(env, "PYTHON_DISPATCH_HANDOFF_SECS", 1),
            lost_grace_secs=_int(env, "PYTHON_SANDBOX_LOST_GRACE_SECS", 0),
            queue_timeout=_int(env, "PYTHON_SCHEDULER_QUEUE_TIMEOUT", 0),
            sweep_interval=_int(env, "PYTHON_SWEEP_INTERVAL_SECS", 1),
            retention_interval=_int(env, "PYTHON_RETENTION_INTERVAL_SECS", 1),
            retention_batch=_int(env, "PYTHON_RETENTION_BATCH", 1),
        )

    def require_auth_token(self) -> None:
        """Refuse to serve without a secret: an empty token would let `Token ` through."""
        if not self.auth_token:
            raise ConfigError("PYTHON_SCHEDULER_AUTH_TOKEN must be set")

    def node_token(self, url: str) -> str:
        """The node's own token, else the shared one ("" when there is neither)."""
        return dict(self.node_tokens).get(url, self.sandbox_auth_token)

    def require_dispatch_settings(self) -> None:
        """The dispatcher needs somewhere to send runs and, for every node, a token that node accepts."""
        self.require_auth_token()
        if not self.sandbox_urls:
            raise ConfigError("PYTHON_SANDBOX_URLS must name at least one sandbox node")
        without = [url for url in self.sandbox_urls if not self.node_token(url)]
        if without:
            raise ConfigError(
                f"PYTHON_SANDBOX_AUTH_TOKEN must be set (or PYTHON_SANDBOX_NODE_TOKENS for {', '.join(without)})"
            )


def markdown_table() -> str:
    """The README's configuration table, generated so documentation and code cannot drift apart."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for var in VARIABLES:
        default = f"`{var.default}`" if var.default else "(empty)"
        lines.append(f"| `{var.name}` | {default} | {var.description} |")
    return "\n".join(lines)
