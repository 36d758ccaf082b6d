"""Sandbox configuration, read once from the environment.

Every variable (name, kind, default, meaning) is declared in the shared registry, `pipeline_config.variables`;
this module is the sandbox's typed view of it plus the rules that need the host (home, uid, hostname) or other
sandbox modules (the egress allow list, the CA bundle file).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pipeline_config import render
from pipeline_config.registry import ConfigError, Documented, parse_size
from pipeline_config.variables import (
    LOG_LEVELS,
    NETWORK_MODES,
    RUNNER_OPTION_VARIABLES,
    SANDBOX,
    SANDBOX_LOG_VARIABLES,
    SANDBOX_TLS_VARIABLES,
)
from sandbox import runner_options, texts
from sandbox.egress_policy import EgressPolicy
from sandbox.runner_options import RunnerOptions
from sandbox.timezone import host_time_zone, is_zone_name

log = logging.getLogger(__name__)

__all__ = ["NETWORK_MODES", "VARIABLES", "ConfigError", "SandboxConfig", "markdown_table", "parse_size"]

# The sandbox's rows of the registry (name, default, description), as the docs and env templates show them.
VARIABLES: tuple[Documented, ...] = SANDBOX.documented()

# What Docker accepts as a network name: upstream's PYTHON_RUNNER_NETWORK=runner-net means the open mode.
_DOCKER_NETWORK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# A Unix socket path is at most 107 bytes: <dir>/<12 hex digits>/proxy.sock.
MAX_EGRESS_DIR = 107 - 13 - len("/proxy.sock")
MAX_CA_BUNDLE = 1 << 20


@dataclass(frozen=True)
class TLSFiles:
    """Certificate files, checked readable at start so a typo fails with one line, not at the first request."""

    cert: str = ""
    key: str = ""
    client_ca: str = ""  # serving: require client certificates signed by it
    ca_bundle: str = ""  # calling: verify the server with it (empty: the system's CAs)

    @property
    def client_pair(self) -> tuple[str, str] | None:
        return (self.cert, self.key) if self.cert else None

    @property
    def verify(self) -> str | bool:
        return self.ca_bundle or True


def tls_files(env: Mapping[str, str], cert: str, key: str, client_ca: str = "", ca_bundle: str = "") -> TLSFiles:
    """Read and check the named variables; a certificate needs its key and the other way round."""
    values = {name: (env.get(name) or "").strip() for name in (cert, key, client_ca, ca_bundle) if name}
    if bool(values[cert]) != bool(values[key]):
        raise ConfigError(f"{cert} and {key} go together: set both or neither")
    for name, path in values.items():
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"{name}={path}: cannot read it")
    if client_ca and values[client_ca] and not values[cert]:
        raise ConfigError(f"{client_ca} needs {cert} and {key}: client certificates are checked on HTTPS only")
    return TLSFiles(values[cert], values[key], values.get(client_ca, ""), values.get(ca_bundle, ""))


@dataclass(frozen=True)
@SANDBOX.config
class SandboxConfig:
    """Defaults come from the registry (`SANDBOX.config`); see pipeline_config/variables.py."""

    auth_token: str
    previous_auth_tokens: tuple[str, ...]
    scheduler_url: str
    timeout: int
    time_zone: str
    bind: str
    podman_url: str
    node_name: str
    outbox_max_bytes: int
    tombstone_secs: int
    max_body_bytes: int
    image: str
    runner_files: str
    slots: int
    memory: int
    pids: int
    cpus: float
    output_limit: int
    tmpfs_size: int
    network: str
    egress_allow: str
    runner_dns: tuple[str, ...]
    egress_host_dir: str
    seccomp_profile: str
    warm_pool: int
    preimport: str
    pool_min_available: int
    log_format: str
    log_to_stdout: bool
    metrics_token: str
    # Derived in from_env from the host and from PYTHON_SANDBOX_STATE_DIR, PYTHON_SANDBOX_EGRESS_DIR,
    # PYTHON_RUNNER_CA_BUNDLE (the file's text) and the PYTHON_STARTER_*ALTERNATIVE_FILE_SERVER_ROOT pair;
    # network and time_zone are the registry's values after the rules below (Docker network names, host zone);
    # runner_options from upstream's runner settings (sandbox.runner_options).
    state_dir: Path = Path("state")
    serve_tls: TLSFiles = TLSFiles()  # this service's HTTPS
    callback_tls: TLSFiles = TLSFiles()  # the callbacks to the scheduler: CA bundle, client certificate
    egress_dir: Path = Path("state/egress")
    ca_bundle: str = ""
    alternative_file_server_root: str = ""
    log_level: str = "INFO"  # PYTHON_SANDBOX_LOG_LEVEL, else PYTHON_STARTER_LOG_LEVEL (log_settings)
    runner_options: RunnerOptions = field(default_factory=RunnerOptions)

    @property
    def accepted_tokens(self) -> tuple[str, ...]:
        return (self.auth_token, *self.previous_auth_tokens)

    @property
    def metrics_credential(self) -> str:
        """What GET /metrics accepts: its own token, else the sandbox's API token."""
        return self.metrics_token or self.auth_token

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 fallbacks: Mapping[str, str] | None = None, warn_unused_secret: bool = True) -> SandboxConfig:
        """fallbacks: values for variables the environment leaves unset (run-local's own defaults).

        warn_unused_secret: warn when SeaTable's secret is set (a sandbox host should not hold it; run-local
        may run on a scheduler host, where it belongs).
        """
        env = os.environ if env is None else env
        values = SANDBOX.read(env, fallbacks)
        if warn_unused_secret and env.get("PYTHON_SCHEDULER_AUTH_TOKEN"):
            log.warning(texts.UNUSED_SEATABLE_SECRET)
        EgressPolicy.for_run("open", values["egress_allow"], None)  # a bad entry fails here, at start, not per run
        home = Path(env.get("HOME") or Path.home())
        state_dir = Path(values.pop("PYTHON_SANDBOX_STATE_DIR") or home / ".local/state/seatable-sandbox")
        egress_dir = Path(values.pop("PYTHON_SANDBOX_EGRESS_DIR") or state_dir / "egress")
        if len(str(egress_dir)) > MAX_EGRESS_DIR:
            raise ConfigError(f"PYTHON_SANDBOX_EGRESS_DIR {egress_dir} is too long for Unix socket paths "
                              f"(at most {MAX_EGRESS_DIR} characters)")
        ca_bundle = values.pop("PYTHON_RUNNER_CA_BUNDLE")
        alternative_root = values.pop("PYTHON_STARTER_ALTERNATIVE_FILE_SERVER_ROOT")
        use_alternative_root = values.pop("PYTHON_STARTER_USE_ALTERNATIVE_FILE_SERVER_ROOT")
        network = _network_mode(values["network"])
        # Upstream's runner settings: declared in the registry, their rules (what is safe) in runner_options.
        upstream = {name: values.pop(name) for name in RUNNER_OPTION_VARIABLES}
        options = runner_options.read(upstream, network, protected=(str(state_dir), str(home)))
        tls = {name: values.pop(name) for name in SANDBOX_TLS_VARIABLES}
        logging_ = _log_settings(values)
        return cls(
            **{**values,
               "podman_url": values["podman_url"] or f"unix:///run/user/{os.getuid()}/podman/podman.sock",
               "node_name": values["node_name"] or os.uname().nodename,
               "network": network,
               "time_zone": _time_zone(values["time_zone"])},
            log_level=logging_.level,
            serve_tls=tls_files(tls, "PYTHON_SANDBOX_TLS_CERT", "PYTHON_SANDBOX_TLS_KEY",
                                client_ca="PYTHON_SANDBOX_TLS_CLIENT_CA"),
            callback_tls=tls_files(tls, "PYTHON_SANDBOX_CLIENT_CERT", "PYTHON_SANDBOX_CLIENT_KEY",
                                   ca_bundle="PYTHON_SCHEDULER_CA_BUNDLE"),
            state_dir=state_dir,
            egress_dir=egress_dir,
            ca_bundle=_read_ca_bundle(ca_bundle) if ca_bundle else "",
            alternative_file_server_root=alternative_root if use_alternative_root else "",
            runner_options=options,
        )


def forget_seatable_secret() -> None:
    """SeaTable's secret is not the sandbox's (warned once in from_env): no child process inherits it."""
    os.environ.pop("PYTHON_SCHEDULER_AUTH_TOKEN", None)


class LogSettings(NamedTuple):
    level: str
    format: str
    to_stdout: bool


def log_settings(env: Mapping[str, str] | None = None) -> LogSettings:
    """Level, format and stream alone (serve sets up logging before the rest is checked); bad values fail."""
    return _log_settings(SANDBOX.read(os.environ if env is None else env, names=SANDBOX_LOG_VARIABLES))


def _log_settings(values: dict[str, Any]) -> LogSettings:
    """Level: ours, else upstream's PYTHON_STARTER_LOG_LEVEL, else INFO. Pops the two level variables."""
    ours, upstream = values.pop("PYTHON_SANDBOX_LOG_LEVEL"), values.pop("PYTHON_STARTER_LOG_LEVEL")
    level = (ours or upstream or "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"log level {level!r} (PYTHON_SANDBOX_LOG_LEVEL or PYTHON_STARTER_LOG_LEVEL): "
                          f"use one of {', '.join(LOG_LEVELS)}")
    return LogSettings(level, values["log_format"], values["log_to_stdout"])


def _read_ca_bundle(path: str) -> str:
    """The PEM text, read once at start (a path of the admin's, never one a runner could plant)."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"PYTHON_RUNNER_CA_BUNDLE={path}: cannot read it ({exc})") from None
    if "-----BEGIN CERTIFICATE-----" not in text or len(text) > MAX_CA_BUNDLE:
        raise ConfigError(f"PYTHON_RUNNER_CA_BUNDLE={path}: not a PEM certificate bundle (at most 1 MiB)")
    return text


def _network_mode(value: str) -> str:
    if value in NETWORK_MODES:
        return value
    if not _DOCKER_NETWORK.fullmatch(value):
        raise ConfigError(f"PYTHON_RUNNER_NETWORK={value!r}: use one of {', '.join(NETWORK_MODES)}")
    log.warning("PYTHON_RUNNER_NETWORK=%s is a Docker network name (upstream's way); runners get the open "
                "network: internet yes, this host and private addresses no", value)
    return "open"


def _time_zone(raw: str) -> str:
    """Empty: the host's zone, read now (upstream mounts the host's /etc/localtime)."""
    if not raw:
        return host_time_zone()
    if not is_zone_name(raw):
        raise ConfigError(f"TIME_ZONE={raw!r} is not a time zone name (like Europe/Berlin)")
    return raw


def markdown_table() -> str:
    """The README's sandbox configuration table, generated from the registry."""
    return render.markdown_table(SANDBOX)
