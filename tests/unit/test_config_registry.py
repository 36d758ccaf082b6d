"""The configuration registry: every variable is read into its service's config, validated, documented."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from pipeline_config.registry import (
    Addresses,
    ConfigError,
    Flag,
    Int,
    Number,
    Password,
    Pattern,
    Service,
    Size,
    Text,
    Urls,
    Use,
    Variable,
    Words,
    Zone,
    services,
)
from pipeline_config.variables import SANDBOX, SCHEDULER, TOOL_VARIABLES, VARIABLES
from sandbox.config import SandboxConfig
from sandbox.timezone import host_time_zone
from scheduler.config import Config
from tests.support.registry import with_defaults

TOKENS = {"PYTHON_SANDBOX_AUTH_TOKEN": "a", "PYTHON_SCHEDULER_AUTH_TOKEN": "b", "HOME": "/home/x"}
# Upstream's runner settings (sandbox.runner_options): a value each that changes the runners' options, and the
# switches that are always on here, which are read but can only be refused ("false") or accepted without effect.
SAMPLES = {
    "PYTHON_SANDBOX_LOG_LEVEL": "debug", "PYTHON_STARTER_LOG_LEVEL": "warning",
    "PYTHON_RUNNER_OTHER_OPTIONS": '["--env=REGION=eu"]',
    "PYTHON_RUNNER_DROPPED_CAPABILITIES": "NET_RAW",
    "PYTHON_RUNNER_UID": "1000", "PYTHON_RUNNER_GID": "1000", "PYTHON_RUNNER_USER": "runner",
    "PYTHON_RUNNER_GROUP": "runner",
    "PYTHON_SANDBOX_NODE_TOKENS": "http://127.0.0.1:8088=node-token",
    # Certificates, keys and CA bundles are files checked readable at start (tests/unit/test_credentials.py
    # checks their pairing); another readable file changes the config.
    **{name: "/etc/passwd" for name in (
        "PYTHON_SCHEDULER_TLS_CERT", "PYTHON_SCHEDULER_TLS_KEY", "PYTHON_SCHEDULER_TLS_CLIENT_CA",
        "PYTHON_SANDBOX_CA_BUNDLE", "PYTHON_DISPATCH_TLS_CERT", "PYTHON_DISPATCH_TLS_KEY",
        "PYTHON_SANDBOX_TLS_CERT", "PYTHON_SANDBOX_TLS_KEY", "PYTHON_SANDBOX_TLS_CLIENT_CA",
        "PYTHON_SCHEDULER_CA_BUNDLE", "PYTHON_SANDBOX_CLIENT_CERT", "PYTHON_SANDBOX_CLIENT_KEY")},
}
TLS_PAIR = {"PYTHON_SCHEDULER_TLS_CERT": "/etc/hostname", "PYTHON_SCHEDULER_TLS_KEY": "/etc/hostname"}
SANDBOX_TLS_PAIR = {"PYTHON_SANDBOX_TLS_CERT": "/etc/hostname", "PYTHON_SANDBOX_TLS_KEY": "/etc/hostname"}
DISPATCH_TLS_PAIR = {"PYTHON_DISPATCH_TLS_CERT": "/etc/hostname", "PYTHON_DISPATCH_TLS_KEY": "/etc/hostname"}
CALLBACK_TLS_PAIR = {"PYTHON_SANDBOX_CLIENT_CERT": "/etc/hostname", "PYTHON_SANDBOX_CLIENT_KEY": "/etc/hostname"}
ALWAYS_ON = {"PYTHON_RUNNER_READ_ONLY_FILESYSTEM", "PYTHON_RUNNER_NO_NEW_PRIVILEGES"}
PARTNERS = {
    "DB_ROOT_USER": {"DB_ROOT_PASSWD": "pw"},
    "PYTHON_STARTER_ALTERNATIVE_FILE_SERVER_ROOT": {"PYTHON_STARTER_USE_ALTERNATIVE_FILE_SERVER_ROOT": "true"},
    "PYTHON_STARTER_USE_ALTERNATIVE_FILE_SERVER_ROOT": {"PYTHON_STARTER_ALTERNATIVE_FILE_SERVER_ROOT": "http://f"},
    # A certificate needs its key (and the other way round); a client CA is checked on HTTPS only: each is
    # changed from a complete setting (both /etc/hostname) to another readable file.
    **{name: TLS_PAIR for name in TLS_PAIR},
    **{name: SANDBOX_TLS_PAIR for name in SANDBOX_TLS_PAIR},
    **{name: DISPATCH_TLS_PAIR for name in DISPATCH_TLS_PAIR},
    **{name: CALLBACK_TLS_PAIR for name in CALLBACK_TLS_PAIR},
    "PYTHON_SCHEDULER_TLS_CLIENT_CA": TLS_PAIR,
    "PYTHON_SANDBOX_TLS_CLIENT_CA": SANDBOX_TLS_PAIR,
}


def sample(var: Variable, use: Use) -> str:
    """A valid value for the variable that differs from its default."""
    kind = use.kind or var.kind
    if isinstance(kind, Int):
        return str(max(kind.minimum, int(use.default or 0)) + 7)
    if isinstance(kind, Number):
        return "0.5" if use.default != "0.5" else "0.75"
    if isinstance(kind, Flag):
        return "true" if use.default in ("", "false") else "false"
    if isinstance(kind, Size):
        return "3m"
    if isinstance(kind, Urls):
        return "http://node-a:8088,http://node-b:8088"
    if isinstance(kind, Addresses):
        return "192.0.2.53, 2001:db8::53"
    if isinstance(kind, Zone):
        return "Europe/Berlin"
    if isinstance(kind, Pattern):
        return "after-claim:5"
    if isinstance(kind, Password):
        return "a-long-status-page-password"
    if isinstance(kind, Words):
        return "old-token-1, old-token-2"
    assert isinstance(kind, Text)
    if kind.choices:
        return next(c for c in kind.choices if kind.case is None or c != kind.case(use.default))
    if var.name in SAMPLES:
        return SAMPLES[var.name]
    if var.name == "PYTHON_RUNNER_NETWORK":
        return "none"  # any other word is a Docker network name, which means the default (open)
    if var.name == "PYTHON_RUNNER_CA_BUNDLE":
        return ""  # a file: tests/sandbox/test_egress_runner.py reads a real one
    if var.name.endswith("_DIR"):
        return "/srv/x"
    return "http://other.example" if "URL" in var.name or "ROOT" in var.name else "other-value"


def config_of(service: Service, env: dict[str, str]) -> Any:
    return Config.from_env(env) if service is SCHEDULER else SandboxConfig.from_env({**TOKENS, **env})


@pytest.mark.parametrize("service", [SCHEDULER, SANDBOX], ids=["scheduler", "sandbox"])
def test_every_variable_is_read_into_the_config(service: Service) -> None:
    base = config_of(service, {})
    for var, use in service.uses():
        if var.name in ALWAYS_ON:
            with pytest.raises(ValueError, match=var.name):
                config_of(service, {var.name: "false"})
            assert config_of(service, {var.name: "true"}) == base
            continue
        value = sample(var, use)
        if not value:
            continue
        extra = PARTNERS.get(var.name, {})  # variables that count only together with another
        changed = config_of(service, {**extra, var.name: value})
        assert changed != config_of(service, extra), f"{var.name} changes nothing"
    assert base == config_of(service, {})


def test_defaults_come_from_the_registry_once() -> None:
    assert Config.from_env({}) == with_defaults(Config)
    fields = {f.name: f for f in dataclasses.fields(Config)}
    assert fields["process_timeout"].default == 60
    assert not fields["auth_token"].repr and not fields["db_passwd"].repr  # secrets never in a repr
    sandbox = SandboxConfig.from_env(TOKENS)
    assert (sandbox.timeout, sandbox.time_zone, sandbox.scheduler_url, sandbox.network) \
        == (60, host_time_zone(), "http://127.0.0.1:5055", "open")
    assert "'a'" not in repr(sandbox) and "'b'" not in repr(sandbox)


def test_shared_variables_are_one_entry_with_a_meaning_per_service() -> None:
    names = [var.name for var in VARIABLES]
    assert len(names) == len(set(names))
    shared = {var.name for var in VARIABLES if var.scheduler and var.sandbox}
    # SeaTable's PYTHON_SCHEDULER_AUTH_TOKEN is the scheduler's alone (issue 20: credentials by role).
    assert shared == {"PYTHON_SCHEDULER_URL", "PYTHON_PROCESS_TIMEOUT", "TIME_ZONE",
                      "PYTHON_SANDBOX_AUTH_TOKEN", "PYTHON_SCHEDULER_MAX_BODY_BYTES", "LOG_FORMAT", "LOG_TO_STDOUT"}
    for var in VARIABLES:  # one default in both services (issue 15); the meanings say what each does with it
        if var.scheduler and var.sandbox:
            assert var.scheduler.default == var.sandbox.default, var.name
    for var in VARIABLES:
        for use in (var.scheduler, var.sandbox):
            if use is not None:
                assert use.meaning.endswith("."), var.name


@pytest.mark.parametrize(("env", "message"), [
    ({"PYTHON_SCHEDULER_PORT": "http"}, "PYTHON_SCHEDULER_PORT='http' is not a whole number"),
    ({"PYTHON_PROCESS_TIMEOUT": "0"}, "PYTHON_PROCESS_TIMEOUT must be at least 1, got 0"),
    ({"PYTHON_SCHEDULER_RATE_LIMIT_PERCENT": "2"}, "must be between 0 and 1, got 2"),
    ({"PYTHON_SCHEDULER_LOG_LEVEL": "loud"}, "use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ({"PYTHON_SANDBOX_URLS": "node:8088"}, "without http:// or https://"),
    ({"PYTHON_DISPATCH_TEST_PAUSE": "later"}, "expected after-claim:SECONDS or after-handoff:SECONDS"),
    ({"DB_PORT": ""}, "DB_PORT=''"),  # the scheduler keeps an empty value, as upstream: an error, not 3306
    ({"PYTHON_SCHEDULER_STATUS_TOKEN": "hunter2"}, "must be at least 12 characters (or empty: off)"),
    ({"PYTHON_SCHEDULER_STATUS_TOKEN": "same-secret-as-seatable", "PYTHON_SCHEDULER_AUTH_TOKEN":
      "same-secret-as-seatable"}, "must not be SeaTable's PYTHON_SCHEDULER_AUTH_TOKEN"),
    ({"LOG_FORMAT": "xml"}, "LOG_FORMAT='xml': use one of plain, json"),
])
def test_scheduler_refuses_bad_values_in_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env(env)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert "hunter2" not in str(caught.value) and "same-secret" not in str(caught.value)  # secrets never echoed


@pytest.mark.parametrize(("env", "message"), [
    ({"PYTHON_RUNNER_CONTAINER_MEMORY": "lots"}, "PYTHON_RUNNER_CONTAINER_MEMORY='lots' is not a size"),
    ({"PYTHON_RUNNER_CONTAINER_CPUS": "-1"}, "PYTHON_RUNNER_CONTAINER_CPUS must be between 0 and inf"),
    ({"PYTHON_STARTER_USE_ALTERNATIVE_FILE_SERVER_ROOT": "maybe"}, "use true or false"),
    ({"PYTHON_SANDBOX_LOG_LEVEL": "chatty"}, "use one of DEBUG, INFO"),
    ({"PYTHON_STARTER_LOG_LEVEL": "TRACE"}, "log level 'TRACE' (PYTHON_SANDBOX_LOG_LEVEL or PYTHON_STARTER_LOG_LEVEL)"),
    ({"PYTHON_SANDBOX_AUTH_TOKEN": "  "}, "PYTHON_SANDBOX_AUTH_TOKEN must be set"),
    ({"PYTHON_RUNNER_DNS": "192.0.2.53,dns.example"}, "PYTHON_RUNNER_DNS: 'dns.example' is not an IP address"),
    ({"PYTHON_RUNNER_NETWORK": "no such/net"}, "PYTHON_RUNNER_NETWORK='no such/net': use one of none, seatable"),
    ({"PYTHON_SCHEDULER_MAX_BODY_BYTES": "2048"}, "PYTHON_SCHEDULER_MAX_BODY_BYTES must be at least 4096"),
    ({"PYTHON_SANDBOX_OUTBOX_MAX_BYTES": "full"}, "PYTHON_SANDBOX_OUTBOX_MAX_BYTES='full' is not a size"),
    ({"PYTHON_SANDBOX_TOMBSTONE_SECS": "0"}, "PYTHON_SANDBOX_TOMBSTONE_SECS must be at least 1"),
    ({"TIME_ZONE": "../../etc/passwd"}, "TIME_ZONE='../../etc/passwd' is not a time zone name"),
])
def test_sandbox_refuses_bad_values_in_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SandboxConfig.from_env({**TOKENS, **env})
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_docker_network_name_means_the_open_network() -> None:
    """Upstream's compose sets PYTHON_RUNNER_NETWORK=runner-net (a Docker network): that is the open mode."""
    assert SandboxConfig.from_env({**TOKENS, "PYTHON_RUNNER_NETWORK": "runner-net"}).network == "open"
    assert SandboxConfig.from_env({**TOKENS, "PYTHON_RUNNER_NETWORK": "seatable"}).network == "seatable"


def test_blank_means_default_on_the_sandbox_except_where_blank_is_a_value() -> None:
    config = SandboxConfig.from_env({**TOKENS, "PYTHON_STARTER_THREAD_COUNT": "", "PYTHON_SANDBOX_PREIMPORT": ""})
    assert config.slots == 10  # upstream's starter: an empty count is the default
    assert config.preimport == ""  # no pre-imports at all
    assert SandboxConfig.from_env({**TOKENS, "PYTHON_SANDBOX_PODMAN_URL": "unix:///x.sock"}).podman_url \
        == "unix:///x.sock"


def test_fallbacks_replace_defaults_not_the_environment() -> None:
    fallbacks = {**TOKENS, "PYTHON_SANDBOX_PODMAN_URL": "unix:///run/sandbox.sock"}
    assert SandboxConfig.from_env({}, fallbacks).podman_url == "unix:///run/sandbox.sock"
    given = SandboxConfig.from_env({"PYTHON_SANDBOX_PODMAN_URL": "unix:///given.sock"}, fallbacks)
    assert given.podman_url == "unix:///given.sock"


def test_a_config_class_must_declare_every_registry_field() -> None:
    table = (Variable("X_ONE", Int(), scheduler=Use("one", "1", "One.")),)
    scheduler, _sandbox = services(table)

    with pytest.raises(TypeError, match="no field one for X_ONE"):
        @scheduler.config
        class Missing:
            other: int

    with pytest.raises(TypeError, match="is not in the registry"):
        @scheduler.config
        class Extra:
            one: int
            stray: str

    @dataclasses.dataclass(frozen=True)
    @scheduler.config
    class Good:
        one: int
        derived: str = "x"

    assert with_defaults(Good) == Good(1, "x")
    with pytest.raises(TypeError, match="declared twice"):
        services(table * 2)


def test_no_other_module_reads_the_environment() -> None:
    """The registry is the one reader: no stray os.environ/getenv in the services (subprocess envs excepted)."""
    repo = Path(__file__).resolve().parents[2]
    # clock.py: TZ, the C library's; image.py and runner_lock.py: environments of subprocesses; host.py:
    # SEATABLE_SANDBOX_USER for the administrators' commands (TOOL_VARIABLES), not the service; metrics*.py:
    # prometheus_client's PROMETHEUS_MULTIPROC_DIR, which the scheduler sets for its own gunicorn workers;
    # wakeup.py: XDG_RUNTIME_DIR, the login session's runtime directory (where the wake sockets live), not ours.
    allowed = {"scheduler/config.py", "sandbox/config.py", "scheduler/clock.py", "sandbox/image.py",
               "sandbox/runner_lock.py", "sandbox/host.py", "scheduler/metrics.py", "scheduler/metrics_dir.py",
               "scheduler/wakeup.py"}
    offenders = []
    packages = ("scheduler", "sandbox", "httpworker", "observability", "pipeline_contract")
    for path in (path for package in packages for path in repo.glob(f"{package}/**/*.py")):
        relative = str(path.relative_to(repo))
        text = path.read_text()
        if relative not in allowed and ("os.environ" in text or "getenv(" in text):
            offenders.append(relative)
    assert offenders == []


def test_every_variable_the_code_names_is_in_the_registry() -> None:
    """A PYTHON_*/SEATABLE_* name in the services' code that the registry does not declare is an undocumented
    variable (the README table, env templates and config objects would not know it)."""
    repo = Path(__file__).resolve().parents[2]
    named = set()
    for package in ("scheduler", "sandbox", "httpworker", "observability"):
        for path in (repo / package).rglob("*.py"):
            named.update(re.findall(r"\b(?:PYTHON|SEATABLE)_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    declared = {var.name for var in VARIABLES} | set(TOOL_VARIABLES)
    assert named - declared == set()
