"""Secrets from files: every `secret=True` variable `X` may be given as `X_FILE` (Podman secrets under
/run/secrets, systemd credentials), read by the registry for both services."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline_config.registry import ConfigError, Service, Text, Use, Variable, services, with_secret_files
from pipeline_config.variables import SANDBOX, SCHEDULER
from sandbox.config import SandboxConfig
from scheduler.config import Config

TOKENS = {"PYTHON_SANDBOX_AUTH_TOKEN": "a", "PYTHON_SCHEDULER_AUTH_TOKEN": "b", "HOME": "/home/x"}
VALUE = "a-secret-value-from-a-file"
# Secrets with a form of their own (a value of that form; others take VALUE).
FORMED = {"PYTHON_SANDBOX_NODE_TOKENS": "http://127.0.0.1:8088=a-node-token-from-a-file"}  # a default node


def config_of(service: Service, env: dict[str, str]) -> Any:
    if service is SCHEDULER:
        return Config.from_env(env)
    base = {name: value for name, value in TOKENS.items() if not any(key.startswith(name) for key in env)}
    return SandboxConfig.from_env({**base, **env})


def secret_file(tmp_path: Path, text: str, name: str = "secret") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return path


SECRETS = [(service, var.name) for service in (SCHEDULER, SANDBOX) for var, _use in service.uses() if var.secret]


@pytest.mark.parametrize(("service", "name"), SECRETS, ids=[f"{s.name}-{n}" for s, n in SECRETS])
def test_every_secret_can_come_from_a_file(service: Service, name: str, tmp_path: Path) -> None:
    partner = {"DB_USER": "pipeline", "DB_PASSWD": "serving-password"} if name == "DB_ROOT_PASSWD" else {}
    value = FORMED.get(name, VALUE)
    path = secret_file(tmp_path, value + "\n")
    from_file = config_of(service, {**partner, f"{name}_FILE": str(path)})
    assert from_file == config_of(service, {**partner, name: value})
    assert from_file != config_of(service, partner), f"{name}_FILE changed nothing"
    # The templates leave X blank to be filled in: X_FILE next to an empty X is the file's value.
    assert config_of(service, {**partner, name: "", f"{name}_FILE": str(path)}) == from_file


def test_one_trailing_newline_is_dropped_and_nothing_else_is_changed(tmp_path: Path) -> None:
    table = (Variable("X_TOKEN", Text(), secret=True, scheduler=Use("token", "", "A secret.")),)
    scheduler, _ = services(table)
    for text, expected in (("tok\n", "tok"), ("tok\r\n", "tok"), ("tok", "tok"), ("t o k\n", "t o k")):
        path = secret_file(tmp_path, text)
        assert scheduler.read({"X_TOKEN_FILE": str(path)}) == {"token": expected}, text


def test_both_the_value_and_the_file_are_refused_in_one_line(tmp_path: Path) -> None:
    path = secret_file(tmp_path, VALUE)
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"DB_PASSWD": "inline-password", "DB_PASSWD_FILE": str(path)})
    message = str(caught.value)
    assert message == "DB_PASSWD and DB_PASSWD_FILE are both set: set one of them"
    assert "inline-password" not in message and VALUE not in message


@pytest.mark.parametrize("kind", ["missing", "directory", "binary"])
def test_an_unreadable_file_is_one_line_naming_the_variable_and_path(kind: str, tmp_path: Path) -> None:
    if kind == "missing":
        path, reason = tmp_path / "nope", "No such file or directory"
    elif kind == "directory":
        path, reason = tmp_path, "Is a directory"
    else:
        path, reason = tmp_path / "binary", "not UTF-8 text"
        path.write_bytes(b"\xff\xfe" + VALUE.encode())
    with pytest.raises(ConfigError) as caught:
        SandboxConfig.from_env({"PYTHON_SCHEDULER_AUTH_TOKEN": "b", "PYTHON_SANDBOX_AUTH_TOKEN_FILE": str(path)})
    message = str(caught.value)
    assert message.startswith(f"PYTHON_SANDBOX_AUTH_TOKEN_FILE={path}: ") and reason in message, message
    assert "\n" not in message and VALUE not in message


def test_only_secrets_are_read_from_files(tmp_path: Path) -> None:
    """A `_FILE` of a setting that is no secret is not a way to set it (nothing documents it)."""
    path = secret_file(tmp_path, "db.example")
    assert Config.from_env({"DB_HOST_FILE": str(path)}).db_host == ""
    assert with_secret_files({"DB_HOST_FILE": str(path)}, SCHEDULER.variables) == {"DB_HOST_FILE": str(path)}


def test_reading_some_names_reads_only_their_files(tmp_path: Path) -> None:
    """The sandbox reads its log settings first (names=...): a secret's broken file is reported by the full read,
    not by that early one."""
    env = {**TOKENS, "PYTHON_SANDBOX_AUTH_TOKEN": "", "PYTHON_SANDBOX_AUTH_TOKEN_FILE": str(tmp_path / "nope")}
    assert SANDBOX.read(env, names=("LOG_FORMAT",)) == {"log_format": "plain"}
    with pytest.raises(ConfigError, match="PYTHON_SANDBOX_AUTH_TOKEN_FILE="):
        SANDBOX.read(env)
