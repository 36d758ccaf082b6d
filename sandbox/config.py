"""Sandbox configuration, read once from the environment (upstream's names where it had them)."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sandbox import runner_options, texts
from sandbox.egress_policy import EgressPolicy
from sandbox.runner_options import RunnerOptions
from sandbox.timezone import host_time_zone, is_zone_name

log = logging.getLogger(__name__)

# name, default, meaning: the README's configuration table is checked against this list.
VARIABLES: list[tuple[str, str, str]] = [
    ("PYTHON_SANDBOX_AUTH_TOKEN", "(required)", "this node's own credential: the token the dispatcher sends as "
     "`Authorization: Token …`, and the key of the proofs on this node's answers (README: Credentials and TLS)"),
    ("PYTHON_SANDBOX_PREVIOUS_AUTH_TOKENS", "", "tokens still accepted while PYTHON_SANDBOX_AUTH_TOKEN is rotated "
     "(comma-separated); remove them once every dispatcher sends the new one"),
    ("PYTHON_SANDBOX_TLS_CERT", "", "PEM certificate (chain) to serve HTTPS with; with PYTHON_SANDBOX_TLS_KEY"),
    ("PYTHON_SANDBOX_TLS_KEY", "", "PEM private key of PYTHON_SANDBOX_TLS_CERT"),
    ("PYTHON_SANDBOX_TLS_CLIENT_CA", "", "PEM CA bundle: with it, only clients (dispatchers) presenting a "
     "certificate signed by it may connect"),
    ("PYTHON_SANDBOX_BIND", "127.0.0.1:8088", "address the sandbox API listens on"),
    ("PYTHON_SANDBOX_PODMAN_URL", "unix:///run/user/<uid>/podman/podman.sock", "the sandbox user's Podman API"),
    ("PYTHON_SANDBOX_NODE_NAME", "<hostname>", "label on this node's containers; orphans are found by it"),
    ("PYTHON_SANDBOX_STATE_DIR", "~/.local/state/seatable-sandbox", "outbox and ledger (SQLite)"),
    ("PYTHON_SANDBOX_OUTBOX_MAX_BYTES", "1g", "outbox size on disk beyond which new runs get 503 \"outbox full\" "
     "(results waiting for an unreachable scheduler)"),
    ("PYTHON_SANDBOX_TOMBSTONE_SECS", "604800", "how long the node remembers a run whose result the scheduler "
     "acknowledged (it answers \"done\" and never runs that id again); must exceed the scheduler's hand-off "
     "and sweep windows"),
    ("PYTHON_SCHEDULER_URL", "http://127.0.0.1:5055", "where running and result callbacks go"),
    ("PYTHON_SCHEDULER_CA_BUNDLE", "", "PEM CA bundle that verifies an https:// PYTHON_SCHEDULER_URL; empty: the "
     "system's CAs"),
    ("PYTHON_SANDBOX_CLIENT_CERT", "", "PEM certificate presented on the callbacks, for a scheduler that "
     "requires client certificates; with PYTHON_SANDBOX_CLIENT_KEY"),
    ("PYTHON_SANDBOX_CLIENT_KEY", "", "PEM private key of PYTHON_SANDBOX_CLIENT_CERT"),
    ("PYTHON_SCHEDULER_MAX_BODY_BYTES", "8388608", "the scheduler's body limit: a result's output is cut (with a "
     "notice) so that its callback body fits; set it as on the scheduler"),
    ("PYTHON_RUNNER_IMAGE", "localhost/seatable-python-runner:<recipe hash>", "runner image: ours, or any image "
     "with a python3 (e.g. upstream's runner with `pip install --user` packages; see The runner image)"),
    ("PYTHON_SANDBOX_RUNNER_FILES", "(the installed runner_rootfs package)", "directory holding the trusted "
     "entrypoint.py and egress_forward.py, as the Podman host sees it; mounted read-only into every runner"),
    ("PYTHON_STARTER_THREAD_COUNT", "10", "runs at once (slots); more get 429"),
    ("PYTHON_PROCESS_TIMEOUT", "60", "wall-time limit per run, seconds; the scheduler's default is the same"),
    ("PYTHON_RUNNER_CONTAINER_MEMORY", "1g", "memory limit (cgroup, or RLIMIT_AS as the fallback)"),
    ("PYTHON_RUNNER_CONTAINER_PIDS", "256", "process/thread limit (cgroup pids, or RLIMIT_NPROC)"),
    ("PYTHON_RUNNER_CONTAINER_CPUS", "", "CPU limit in cores where cgroups are delegated; empty = none"),
    ("PYTHON_RUNNER_OUTPUT_LIMIT", "1000000", "characters of output kept; past it the script runs on, the rest "
     "of its output is dropped and the cut is marked"),
    ("PYTHON_RUNNER_TMPFS_MOUNT_SIZE_IN_BYTES", "104857600", "size of the runner's /tmp"),
    ("PYTHON_RUNNER_NETWORK", "open", "runner network: open (an interface with TCP, UDP and DNS to the internet; "
     "this host, loopback, metadata, private and reserved addresses refused unless listed), seatable (HTTP(S) "
     "through the sandbox's proxy to the run's SeaTable server and the allow list only), none (nothing); a Docker "
     "network name such as upstream's runner-net means open"),
    ("PYTHON_RUNNER_EGRESS_ALLOW", "", "more destinations runners may reach: host, host:port, [v6]:port or an "
     "http(s) URL, comma-separated; a listed IP literal may be private or loopback; in the open mode a bare host "
     "means all its ports"),
    ("PYTHON_RUNNER_DNS", "", "DNS servers of runners in the open mode (IP addresses, comma-separated); empty: "
     "slirp4netns's forwarder to this host's resolvers"),
    ("PYTHON_RUNNER_CA_BUNDLE", "", "PEM file of extra CA certificates the runners trust (REQUESTS_CA_BUNDLE, "
     "SSL_CERT_FILE), e.g. for a SeaTable server with an in-house CA"),
    ("PYTHON_RUNNER_OTHER_OPTIONS", "", "upstream's extra `docker run` options, a Python list of strings; here "
     "`--volume=/host:/path[:ro|rw]` and `--mount=type=bind,...` (read-only unless rw is written; never a system "
     "path or the sandbox's own), `--env=NAME=VALUE` and `--add-host=name:ip` (open mode); anything else is refused "
     "at start"),
    ("PYTHON_RUNNER_READ_ONLY_FILESYSTEM", "", "upstream's switch; runners are always read-only here: true is "
     "accepted, false refused at start"),
    ("PYTHON_RUNNER_NO_NEW_PRIVILEGES", "", "upstream's switch; always on here: true is accepted, false refused"),
    ("PYTHON_RUNNER_DROPPED_CAPABILITIES", "", "upstream's list; runners have no capabilities at all here, any "
     "list of capability names is accepted"),
    ("PYTHON_RUNNER_UID", "", "upstream's runner user (also _GID, _USER, _GROUP); each run has an unprivileged "
     "uid of its own here: 0/root is refused, other values have no effect"),
    ("PYTHON_SANDBOX_EGRESS_DIR", "<state dir>/egress", "where the per-run egress sockets are created"),
    ("PYTHON_SANDBOX_EGRESS_HOST_DIR", "(same)", "that directory as the Podman host sees it, when the sandbox itself "
     "runs in a container"),
    ("PYTHON_STARTER_ALTERNATIVE_FILE_SERVER_ROOT", "", "replaces scheme and host of script URLs (when used)"),
    ("PYTHON_STARTER_USE_ALTERNATIVE_FILE_SERVER_ROOT", "", "true: use it (upstream needs both set)"),
    ("TIME_ZONE", "", "TZ inside the runner; empty: the host's zone (the name /etc/localtime links to, or "
     "/etc/timezone, read at start; UTC if neither names one), as upstream"),
    ("PYTHON_SANDBOX_SECCOMP_PROFILE", "(tightened Podman default)", "Podman seccomp profile for runners"),
    ("PYTHON_SANDBOX_WARM_POOL", "2", "pre-started runners waiting for a job; 0 turns the pool off"),
    ("PYTHON_SANDBOX_PREIMPORT", "seatable_api,pandas", "modules warm runners import before their job; "
     "a runner made to replace a taken one imports those of them the taken run's script imported"),
    ("PYTHON_SANDBOX_POOL_MIN_AVAILABLE", "1g", "below this much available memory the pool empties"),
]

NETWORK_MODES = ("none", "seatable", "open")
# What Docker accepts as a network name: upstream's PYTHON_RUNNER_NETWORK=runner-net means the open mode.
_DOCKER_NETWORK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# A Unix socket path is at most 107 bytes: <dir>/<12 hex digits>/proxy.sock.
MAX_EGRESS_DIR = 107 - 13 - len("/proxy.sock")
MAX_CA_BUNDLE = 1 << 20
MIN_BODY_BYTES = 4096  # room for a result with its notices

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Docker-style sizes: 512m, 1g, 1048576."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r}")
    number, unit = match.groups()
    return int(float(number) * 1024 ** " kmgt".index(unit.lower() or " "))


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
        raise ValueError(f"{cert} and {key} go together: set both or neither")
    for name, path in values.items():
        if path and not os.access(path, os.R_OK):
            raise ValueError(f"{name}={path}: cannot read it")
    if client_ca and values[client_ca] and not values[cert]:
        raise ValueError(f"{client_ca} needs {cert} and {key}: client certificates are checked on HTTPS only")
    return TLSFiles(values[cert], values[key], values.get(client_ca, ""), values.get(ca_bundle, ""))


@dataclass(frozen=True)
class SandboxConfig:
    auth_token: str
    scheduler_url: str
    previous_auth_tokens: tuple[str, ...] = ()
    serve_tls: TLSFiles = TLSFiles()  # this service's HTTPS
    callback_tls: TLSFiles = TLSFiles()  # the callbacks to the scheduler: CA bundle, client certificate
    bind: str = "127.0.0.1:8088"
    podman_url: str = ""
    node_name: str = "sandbox"
    state_dir: Path = Path("state")
    outbox_max_bytes: int = 1 << 30
    tombstone_secs: int = 7 * 24 * 3600
    max_body_bytes: int = 8 << 20
    image: str = ""
    runner_files: str = ""
    slots: int = 10
    timeout: int = 60
    memory: int = 1 << 30
    pids: int = 256
    cpus: float = 0.0
    output_limit: int = 1_000_000
    tmpfs_size: int = 100 << 20
    network: str = "open"
    egress_allow: str = ""
    runner_dns: tuple[str, ...] = ()
    ca_bundle: str = ""
    egress_dir: Path = Path("state/egress")
    egress_host_dir: str = ""
    alternative_file_server_root: str = ""
    time_zone: str = "UTC"
    seccomp_profile: str = ""
    warm_pool: int = 2
    preimport: str = "seatable_api,pandas"
    pool_min_available: int = 1 << 30
    runner_options: RunnerOptions = field(default_factory=RunnerOptions)

    @property
    def accepted_tokens(self) -> tuple[str, ...]:
        return (self.auth_token, *self.previous_auth_tokens)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> SandboxConfig:
        env = dict(os.environ if env is None else env)
        if not env.get("PYTHON_SANDBOX_AUTH_TOKEN"):
            raise ValueError("PYTHON_SANDBOX_AUTH_TOKEN must be set")
        if env.get("PYTHON_SCHEDULER_AUTH_TOKEN"):
            log.warning(texts.SEATABLE_SECRET_NOT_USED)
        home = Path(env.get("HOME") or Path.home())
        network = _network_mode(env.get("PYTHON_RUNNER_NETWORK") or "open")
        runner_dns = _addresses("PYTHON_RUNNER_DNS", env.get("PYTHON_RUNNER_DNS", ""))
        egress_allow = env.get("PYTHON_RUNNER_EGRESS_ALLOW", "")
        EgressPolicy.for_run("open", egress_allow, None)  # a bad entry fails here, at start, not per run
        state_dir = Path(env.get("PYTHON_SANDBOX_STATE_DIR") or home / ".local/state/seatable-sandbox")
        egress_dir = Path(env.get("PYTHON_SANDBOX_EGRESS_DIR") or state_dir / "egress")
        if len(str(egress_dir)) > MAX_EGRESS_DIR:
            raise ValueError(f"PYTHON_SANDBOX_EGRESS_DIR {egress_dir} is too long for Unix socket paths "
                             f"(at most {MAX_EGRESS_DIR} characters)")
        options = runner_options.read(env, network, protected=(str(state_dir), str(home)))
        ca_bundle = env.get("PYTHON_RUNNER_CA_BUNDLE", "")
        if ca_bundle:
            ca_bundle = _read_ca_bundle(ca_bundle)
        return cls(
            auth_token=env["PYTHON_SANDBOX_AUTH_TOKEN"],
            scheduler_url=env.get("PYTHON_SCHEDULER_URL", "http://127.0.0.1:5055").rstrip("/"),
            previous_auth_tokens=tuple(t for t in re.split(r"[\s,]+", env.get(
                "PYTHON_SANDBOX_PREVIOUS_AUTH_TOKENS", "")) if t),
            serve_tls=tls_files(env, "PYTHON_SANDBOX_TLS_CERT", "PYTHON_SANDBOX_TLS_KEY",
                                client_ca="PYTHON_SANDBOX_TLS_CLIENT_CA"),
            callback_tls=tls_files(env, "PYTHON_SANDBOX_CLIENT_CERT", "PYTHON_SANDBOX_CLIENT_KEY",
                                   ca_bundle="PYTHON_SCHEDULER_CA_BUNDLE"),
            bind=env.get("PYTHON_SANDBOX_BIND", "127.0.0.1:8088"),
            podman_url=env.get("PYTHON_SANDBOX_PODMAN_URL")
            or f"unix:///run/user/{os.getuid()}/podman/podman.sock",
            node_name=env.get("PYTHON_SANDBOX_NODE_NAME") or os.uname().nodename,
            state_dir=state_dir,
            outbox_max_bytes=_size(env, "PYTHON_SANDBOX_OUTBOX_MAX_BYTES", "1g"),
            tombstone_secs=_positive(env, "PYTHON_SANDBOX_TOMBSTONE_SECS", 7 * 24 * 3600),
            max_body_bytes=_at_least(env, "PYTHON_SCHEDULER_MAX_BODY_BYTES", 8 << 20, MIN_BODY_BYTES),
            image=env.get("PYTHON_RUNNER_IMAGE", ""),
            runner_files=env.get("PYTHON_SANDBOX_RUNNER_FILES", ""),
            slots=_positive(env, "PYTHON_STARTER_THREAD_COUNT", 10),
            timeout=_positive(env, "PYTHON_PROCESS_TIMEOUT", 60),
            memory=parse_size(env.get("PYTHON_RUNNER_CONTAINER_MEMORY") or "1g"),
            pids=_positive(env, "PYTHON_RUNNER_CONTAINER_PIDS", 256),
            cpus=float(env.get("PYTHON_RUNNER_CONTAINER_CPUS") or 0),
            output_limit=_positive(env, "PYTHON_RUNNER_OUTPUT_LIMIT", 1_000_000),
            tmpfs_size=_positive(env, "PYTHON_RUNNER_TMPFS_MOUNT_SIZE_IN_BYTES", 100 << 20),
            network=network,
            egress_allow=egress_allow,
            runner_dns=runner_dns,
            ca_bundle=ca_bundle,
            egress_dir=egress_dir,
            egress_host_dir=env.get("PYTHON_SANDBOX_EGRESS_HOST_DIR", ""),
            alternative_file_server_root=(
                env.get("PYTHON_STARTER_ALTERNATIVE_FILE_SERVER_ROOT", "").rstrip("/")
                if _true(env.get("PYTHON_STARTER_USE_ALTERNATIVE_FILE_SERVER_ROOT", "")) else ""),
            time_zone=_time_zone(env.get("TIME_ZONE", "")),
            seccomp_profile=env.get("PYTHON_SANDBOX_SECCOMP_PROFILE", ""),
            warm_pool=_whole(env, "PYTHON_SANDBOX_WARM_POOL", 2),
            preimport=env.get("PYTHON_SANDBOX_PREIMPORT", "seatable_api,pandas"),
            pool_min_available=parse_size(env.get("PYTHON_SANDBOX_POOL_MIN_AVAILABLE") or "1g"),
            runner_options=options,
        )


def _network_mode(value: str) -> str:
    if value in NETWORK_MODES:
        return value
    if not _DOCKER_NETWORK.fullmatch(value):
        raise ValueError(f"PYTHON_RUNNER_NETWORK={value!r}: use one of {', '.join(NETWORK_MODES)}")
    log.warning("PYTHON_RUNNER_NETWORK=%s is a Docker network name (upstream's way); runners get the open "
                "network: internet yes, this host and private addresses no", value)
    return "open"


def _addresses(name: str, raw: str) -> tuple[str, ...]:
    entries = [entry for entry in re.split(r"[\s,]+", raw) if entry]
    for entry in entries:
        try:
            ipaddress.ip_address(entry)
        except ValueError:
            raise ValueError(f"{name}: {entry!r} is not an IP address") from None
    return tuple(entries)


def _read_ca_bundle(path: str) -> str:
    """The PEM text, read once at start (a path of the admin's, never one a runner could plant)."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"PYTHON_RUNNER_CA_BUNDLE={path}: cannot read it ({exc})") from None
    if "-----BEGIN CERTIFICATE-----" not in text or len(text) > MAX_CA_BUNDLE:
        raise ValueError(f"PYTHON_RUNNER_CA_BUNDLE={path}: not a PEM certificate bundle (at most 1 MiB)")
    return text


def _time_zone(raw: str) -> str:
    name = raw.strip()
    if not name:
        return host_time_zone()
    if not is_zone_name(name):
        raise ValueError(f"TIME_ZONE={raw!r} is not a time zone name (like Europe/Berlin)")
    return name


def _true(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _whole(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name) or str(default)
    if not raw.isdigit():
        raise ValueError(f"{name}={raw!r} is not a whole number >= 0")
    return int(raw)


def _positive(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name) or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {value}")
    return value


def _size(env: dict[str, str], name: str, default: str) -> int:
    raw = env.get(name) or default
    try:
        return parse_size(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a size (e.g. 512m, 1g)") from None


def _at_least(env: dict[str, str], name: str, default: int, minimum: int) -> int:
    value = _positive(env, name, default)
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return value


def markdown_table() -> str:
    """The README's sandbox configuration table, generated from VARIABLES."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, default, meaning in VARIABLES:
        shown = f"`{default}`" if default else "(empty)"
        lines.append(f"| `{name}` | {shown} | {meaning[0].upper() + meaning[1:]}. |")
    return "\n".join(lines)
