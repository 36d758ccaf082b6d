"""Scheduler configuration, read once from the environment.

Every variable (name, kind, default, meaning) is declared in the shared registry, `pipeline_config.variables`;
this module is the scheduler's typed view of it. Names and defaults follow upstream's scheduler wherever upstream
had one, so an existing SeaTable deployment can point at this scheduler without renaming anything.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline_config import render
from pipeline_config.registry import ConfigError, Documented
from pipeline_config.variables import SCHEDULER, SCHEDULER_TLS_VARIABLES

__all__ = ["VARIABLES", "Config", "ConfigError", "markdown_table"]

# The scheduler's rows of the registry (name, default, description), as the docs and env templates show them.
VARIABLES: tuple[Documented, ...] = SCHEDULER.documented()


def _file(values: Mapping[str, str], name: str) -> str:
    path: str = values[name]
    if path and not os.access(path, os.R_OK):
        raise ConfigError(f"{name}={path}: cannot read it")
    return path


def _pair(values: Mapping[str, str], cert: str, key: str) -> tuple[str, str]:
    pair = _file(values, cert), _file(values, key)
    if bool(pair[0]) != bool(pair[1]):
        raise ConfigError(f"{cert} and {key} go together: set both or neither")
    return pair


def _node_tokens(raw: str, urls: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """PYTHON_SANDBOX_NODE_TOKENS as (url, token) pairs, each url one of PYTHON_SANDBOX_URLS."""
    pairs = []
    for entry in re.split(r"[\s,]+", raw):
        if not entry:
            continue
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


@dataclass(frozen=True)
@SCHEDULER.config
class Config:
    """Defaults and field order come from the registry (`SCHEDULER.config`); see pipeline_config/variables.py."""

    auth_token: str
    previous_auth_tokens: tuple[str, ...]
    sandbox_auth_token: str
    scheduler_url: str
    process_timeout: int
    time_zone: str
    seatable_server_url: str
    db_host: str
    db_port: int
    database_name: str
    sqlite_path: str
    delete_log_days: int
    delete_statistics_days: int
    window_secs: int
    rate_limit_percent: float
    total_thread_count: int
    bind_host: str
    port: int
    workers: int
    threads: int
    accept_unauthenticated_callbacks: bool
    max_body_bytes: int
    log_level: str
    log_format: str
    log_to_stdout: bool
    metrics_token: str
    status_token: str
    sandbox_urls: tuple[str, ...]
    dispatch_batch: int
    dispatch_threads: int
    dispatch_wake_dir: str
    dispatch_fetch_script: bool
    lease_secs: int
    handoff_secs: int
    lost_grace_secs: int
    unreachable_secs: int
    queue_timeout: int
    sweep_interval: int
    retention_interval: int
    retention_batch: int
    dispatch_test_pause: str
    # Derived in from_env from DB_USER, DB_PASSWD, DB_ROOT_USER and DB_ROOT_PASSWD: the serving processes' account
    # (DB_USER), and root's, which only migrate uses.
    db_user: str = "root"
    db_passwd: str = field(default="", repr=False)
    db_root_user: str = ""  # set only with DB_ROOT_PASSWD
    db_root_passwd: str = field(default="", repr=False)
    # Derived in from_env from PYTHON_SANDBOX_NODE_TOKENS and the TLS file variables (checked readable there).
    node_tokens: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    sandbox_ca_bundle: str = ""
    dispatch_tls: tuple[str, str] = ("", "")  # client certificate and key presented to the nodes
    tls: tuple[str, str] = ("", "")  # certificate and key the API serves HTTPS with
    tls_client_ca: str = ""

    @property
    def uses_mysql(self) -> bool:
        return bool(self.db_host)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        values = SCHEDULER.read(os.environ if environ is None else environ)
        # Upstream used the root account whenever its password was given; here only migrate does.
        user, passwd = values.pop("DB_USER"), values.pop("DB_PASSWD")
        root_user, root_passwd = values.pop("DB_ROOT_USER"), values.pop("DB_ROOT_PASSWD")
        root_user = (root_user or "root") if root_passwd else ""
        if root_passwd and not (user and passwd):
            user, passwd = "", ""  # serving refuses (require_service_database); migrate still works
        else:
            user = user or "root"
        tls = _pair(values, "PYTHON_SCHEDULER_TLS_CERT", "PYTHON_SCHEDULER_TLS_KEY")
        tls_client_ca = _file(values, "PYTHON_SCHEDULER_TLS_CLIENT_CA")
        if tls_client_ca and not tls[0]:
            raise ConfigError("PYTHON_SCHEDULER_TLS_CLIENT_CA needs PYTHON_SCHEDULER_TLS_CERT and _KEY")
        node_tokens = _node_tokens(values["PYTHON_SANDBOX_NODE_TOKENS"], values["sandbox_urls"])
        sandbox_ca_bundle = _file(values, "PYTHON_SANDBOX_CA_BUNDLE")
        dispatch_tls = _pair(values, "PYTHON_DISPATCH_TLS_CERT", "PYTHON_DISPATCH_TLS_KEY")
        for name in (*SCHEDULER_TLS_VARIABLES, "PYTHON_SANDBOX_NODE_TOKENS"):
            values.pop(name)
        config = cls(**values, node_tokens=node_tokens, sandbox_ca_bundle=sandbox_ca_bundle, dispatch_tls=dispatch_tls,
                     tls=tls, tls_client_ca=tls_client_ca, db_user=user, db_passwd=passwd, db_root_user=root_user,
                     db_root_passwd=root_passwd)
        if config.status_token and config.status_token == config.auth_token:
            raise ConfigError("PYTHON_SCHEDULER_STATUS_TOKEN must not be SeaTable's PYTHON_SCHEDULER_AUTH_TOKEN")
        return config

    def require_auth_token(self) -> None:
        """Refuse to serve without a secret: an empty token would let `Token ` through."""
        if not self.auth_token:
            raise ConfigError("PYTHON_SCHEDULER_AUTH_TOKEN must be set")

    def node_token(self, url: str) -> str:
        """The node's own token, else the shared one ("" when there is neither)."""
        return dict(self.node_tokens).get(url, self.sandbox_auth_token)

    def require_service_database(self) -> None:
        """The serving processes connect as DB_USER, never as DB_ROOT_USER."""
        if self.uses_mysql and not self.db_user:
            raise ConfigError("DB_ROOT_PASSWD is used by `seatable-scheduler migrate` only: set DB_USER and "
                              "DB_PASSWD for the serving processes (migrate creates that user when it is missing)")

    @property
    def metrics_credential(self) -> str:
        """What GET /metrics accepts: its own token, else the API token."""
        return self.metrics_token or self.auth_token

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
    return render.markdown_table(SCHEDULER)
