"""The scheduler's own resources with least privilege (issue 20, item 5), against real processes and databases.

DB_ROOT_* serves `migrate` only: the serving processes connect as DB_USER, which migrate creates with row rights
and nothing else. SQLite files are 0600 whatever the umask. gunicorn's control socket is not opened.
"""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pymysql
import pytest
import requests

from tests.scheduler.conftest import AUTH, BASE, REPO, TOKEN, RunningServer
from tests.support.mariadb import MariaDBServer


def scheduler_cli(args: list[str], env: dict[str, str], umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    full = {**{k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PYTHON_SCHEDULER_"))},
            "PYTHONPATH": str(REPO), **env}
    return subprocess.run([sys.executable, "-m", "scheduler.cli", *args], cwd=REPO, env=full, capture_output=True,
                          text=True, timeout=120, check=False, preexec_fn=lambda: os.umask(umask))


def post_run(server: RunningServer) -> None:
    body = {"dtable_uuid": BASE, "script_name": "a.py", "owner": "alice@auth.local"}
    assert requests.post(f"{server.url}/run-script/", json=body, headers=AUTH, timeout=30).status_code == 200


def test_sqlite_files_are_private(tmp_path: Path, serve: Callable[[dict[str, str]], RunningServer]) -> None:
    path = tmp_path / "state" / "scheduler.sqlite3"
    env = {"PYTHON_SCHEDULER_AUTH_TOKEN": TOKEN, "PYTHON_SCHEDULER_SQLITE_PATH": str(path)}
    result = scheduler_cli(["migrate"], env, umask=0)  # the most permissive umask
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    server = serve(env)
    post_run(server)
    files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
    assert {p.name for p in files} >= {path.name, f"{path.name}-wal", f"{path.name}-shm"}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), [(p, oct(p.stat().st_mode)) for p in files]


def test_an_older_world_readable_database_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.sqlite3"
    path.touch(mode=0o644)
    path.chmod(0o644)
    env = {"PYTHON_SCHEDULER_AUTH_TOKEN": TOKEN, "PYTHON_SCHEDULER_SQLITE_PATH": str(path)}
    assert scheduler_cli(["migrate"], env).returncode == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_no_gunicorn_control_socket(tmp_path: Path, serve: Callable[[dict[str, str]], RunningServer]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    server = serve({"PYTHON_SCHEDULER_AUTH_TOKEN": TOKEN, "HOME": str(home), "XDG_RUNTIME_DIR": str(home),
                    "PYTHON_SCHEDULER_SQLITE_PATH": str(tmp_path / "s.sqlite3")})
    post_run(server)
    assert not list(home.rglob("*.ctl")), list(home.rglob("*"))


@pytest.fixture
def admin(mariadb_server: MariaDBServer) -> Iterator[tuple[str, str]]:
    """A privileged account over TCP, standing in for MariaDB's root."""
    name, password = f"dba_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    root = pymysql.connect(unix_socket=mariadb_server.settings.socket, user="root", password="", autocommit=True)
    with root.cursor() as cursor:
        cursor.execute("CREATE USER %s@'127.0.0.1' IDENTIFIED BY %s", (name, password))
        cursor.execute("GRANT ALL PRIVILEGES ON *.* TO %s@'127.0.0.1' WITH GRANT OPTION", (name,))
    try:
        yield name, password
    finally:
        with root.cursor() as cursor:
            cursor.execute("DROP USER IF EXISTS %s@'127.0.0.1'", (name,))
        root.close()


def test_root_credentials_serve_migrate_only(mariadb_server: MariaDBServer, admin: tuple[str, str],
                                             serve: Callable[[dict[str, str]], RunningServer]) -> None:
    database = f"least_{secrets.token_hex(4)}"
    service, service_password = f"svc_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    settings = mariadb_server.settings
    env = {"PYTHON_SCHEDULER_AUTH_TOKEN": TOKEN, "DB_HOST": settings.host, "DB_PORT": str(settings.port),
           "DATABASE_NAME": database, "DB_ROOT_USER": admin[0], "DB_ROOT_PASSWD": admin[1]}

    refused = scheduler_cli(["serve"], env)  # root's password alone: no serving process connects as root
    assert refused.returncode == 2 and "DB_USER" in refused.stderr and len(refused.stderr.splitlines()) == 1

    server = serve({**env, "DB_USER": service, "DB_PASSWD": service_password})  # serve --migrate
    post_run(server)
    root = pymysql.connect(unix_socket=settings.socket, user="root", password="", autocommit=True)
    try:
        with root.cursor() as cursor:
            cursor.execute("SELECT DISTINCT user FROM information_schema.processlist WHERE db = %s", (database,))
            users = {row[0] for row in cursor.fetchall()}
            cursor.execute("SHOW GRANTS FOR %s@'%%'", (service,))
            grants = " ".join(row[0] for row in cursor.fetchall())
        assert users == {service}, users  # the API's pooled connections
        assert f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{database}`.*" in grants, grants
        assert "ALL PRIVILEGES" not in grants and "DROP" not in grants
        with pytest.raises(pymysql.err.OperationalError):  # the serving account cannot change the schema
            as_service = pymysql.connect(host=settings.host, port=settings.port, user=service,
                                         password=service_password, database=database, autocommit=True)
            with as_service.cursor() as cursor:
                cursor.execute("DROP TABLE script_log")
    finally:
        with root.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{database}`")
            cursor.execute("DROP USER IF EXISTS %s@'%%'", (service,))
        root.close()
