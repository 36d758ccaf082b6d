"""Configuration from the environment and the command line entry point."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_config.variables import SCHEDULER
from scheduler import cli
from scheduler.config import VARIABLES, Config, ConfigError, markdown_table
from tests.scheduler.conftest import REPO, TOKEN
from tests.support.registry import with_defaults


def test_defaults_follow_upstream() -> None:
    config = Config.from_env({})
    assert config.port == 5055
    assert config.process_timeout == 60  # as SeaTable's release compose sets it, in both services
    assert (config.delete_log_days, config.delete_statistics_days) == (30, 90)
    assert (config.window_secs, config.rate_limit_percent, config.total_thread_count) == (300, 0.25, 10)
    assert config.database_name == "scheduler"
    assert not config.uses_mysql and not config.accept_unauthenticated_callbacks
    assert config == with_defaults(Config)  # the dataclass defaults and the variable table agree


def test_every_variable_is_read_and_documented() -> None:
    names = [v.name for v in VARIABLES]
    assert len(names) == len(set(names))
    assert all(v.description.endswith(".") or v.description.endswith(")") for v in VARIABLES)
    # "Read": tests/unit/test_config_registry.py sets each one and sees the config change.
    fields = {f.name for f in dataclasses.fields(Config)}
    assert {use.field for _var, use in SCHEDULER.uses() if use.field} <= fields
    table = markdown_table()
    assert all(f"`{name}`" in table for name in names)


def test_values_are_parsed_and_checked() -> None:
    config = Config.from_env(
        {
            "PYTHON_SCHEDULER_PORT": "6000",
            "PYTHON_SCHEDULER_ACCEPT_UNAUTHENTICATED_CALLBACKS": "True",
            "PYTHON_SCHEDULER_RATE_LIMIT_PERCENT": "0.5",
            "SEATABLE_SERVER_URL": "https://cloud.example/",
        }
    )
    assert (config.port, config.accept_unauthenticated_callbacks, config.rate_limit_percent) == (
        6000,
        True,
        0.5,
    )
    assert config.seatable_server_url == "https://cloud.example"
    for env in (
        {"PYTHON_SCHEDULER_PORT": "http"},
        {"PYTHON_PROCESS_TIMEOUT": "0"},
        {"PYTHON_SCHEDULER_RATE_LIMIT_PERCENT": "2"},
        {"PYTHON_SCHEDULER_ACCEPT_UNAUTHENTICATED_CALLBACKS": "maybe"},
        {"PYTHON_SCHEDULER_LOG_LEVEL": "LOUD"},
        {"TIME_ZONE": "Mars/Olympus_Mons"},
        {"TIME_ZONE": "../../etc/passwd"},
    ):
        with pytest.raises(ConfigError):
            Config.from_env(env)


def test_database_credentials_root_for_migrate_only() -> None:
    both = Config.from_env({"DB_ROOT_PASSWD": "r", "DB_USER": "u", "DB_PASSWD": "p", "DB_HOST": "db"})
    assert (both.db_user, both.db_passwd) == ("u", "p")  # upstream served as root here
    assert (both.db_root_user, both.db_root_passwd) == ("root", "r")
    both.require_service_database()
    user = Config.from_env({"DB_USER": "u", "DB_PASSWD": "p", "DB_HOST": "db"})
    assert (user.db_user, user.db_passwd, user.uses_mysql, user.db_root_user) == ("u", "p", True, "")
    assert "db_passwd" not in repr(user) and "'r'" not in repr(both)
    root_only = Config.from_env({"DB_ROOT_PASSWD": "r", "DB_ROOT_USER": "admin", "DB_HOST": "db"})
    assert root_only.db_root_user == "admin"
    with pytest.raises(ConfigError, match="migrate"):
        root_only.require_service_database()


def test_auth_token_is_required() -> None:
    with pytest.raises(ConfigError):
        Config.from_env({}).require_auth_token()
    with pytest.raises(ConfigError):
        dataclasses.replace(with_defaults(Config), auth_token="").require_auth_token()


def test_cli_migrate_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("PYTHON_SCHEDULER_SQLITE_PATH", str(tmp_path / "db" / "s.sqlite3"))
    monkeypatch.delenv("DB_HOST", raising=False)
    assert cli.main(["migrate"]) == 0
    assert "created script_log" in capsys.readouterr().out
    assert cli.main(["migrate"]) == 0
    assert capsys.readouterr().out.strip() == "migrate: schema is up to date"


def test_cli_refuses_to_serve_without_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTHON_SCHEDULER_AUTH_TOKEN", raising=False)
    assert cli.main(["serve"]) == 2


def test_cli_commands_table_and_module_entry() -> None:
    assert {"serve", "migrate"} <= set(cli.COMMANDS)
    result = subprocess.run(
        [sys.executable, "-m", "scheduler.cli", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PYTHON_SCHEDULER_AUTH_TOKEN": TOKEN},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "migrate" in result.stdout
