"""A private MariaDB server for tests and benchmarks, started from the installed mariadb-server package.

`start_server()` is the library entry (the benchmark uses it too); the fixtures wrap it. Each server gets
its own datadir, socket and port under a temp dir, so it never touches a system MariaDB, and needs no
systemd. As root the server runs as the `mysql` user, who then owns the datadir.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pymysql
import pytest

from tests.support.harness import terminate

MARIADBD = shutil.which("mariadbd", path="/usr/sbin:/usr/bin:/sbin") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"


@dataclass(frozen=True)
class DatabaseSettings:
    host: str
    port: int
    user: str
    password: str
    database: str
    socket: str

    def env(self) -> dict[str, str]:
        """The scheduler's environment variables for this database (upstream's names)."""
        return {
            "DB_HOST": self.host,
            "DB_PORT": str(self.port),
            "DB_USER": self.user,
            "DB_PASSWD": self.password,
            "DB_ROOT_PASSWD": "",
            "DATABASE_NAME": self.database,
        }

    def connect(self, database: str | None = None) -> pymysql.connections.Connection:
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=database if database is not None else self.database,
            charset="utf8mb4",
            autocommit=True,
        )


@dataclass
class MariaDBServer:
    base: Path
    process: subprocess.Popen[bytes]
    settings: DatabaseSettings
    argv: list[str] = field(default_factory=list)

    def shutdown(self) -> None:
        """Stop mariadbd cleanly (SIGTERM), keeping its data, so `start_again()` brings the same server back."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)

    def start_again(self, timeout: float = 60.0) -> None:
        """Start mariadbd on the same datadir and port after `shutdown()`; returns once it answers."""
        assert self.argv and self.process.poll() is not None
        self.process = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_until_up(self.process, Path(self.settings.socket), self.base / "run" / "error.log", timeout).close()

    def create_database(self, name: str | None = None) -> DatabaseSettings:
        name = name or f"t_{secrets.token_hex(6)}"
        with contextlib.closing(self.settings.connect(database="")) as conn, conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        return replace(self.settings, database=name)

    def drop_database(self, name: str) -> None:
        with contextlib.closing(self.settings.connect(database="")) as conn, conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")

    def stop(self) -> None:
        terminate(self.process)
        shutil.rmtree(self.base, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except OSError:
        return "(no error log)"


def start_server(extra_args: tuple[str, ...] = (), timeout: float = 60.0) -> MariaDBServer:
    """Initialise a datadir, start mariadbd on a free localhost port and create a user and database."""
    as_root = os.geteuid() == 0
    # As root the server runs as mysql, which must reach the datadir: /tmp, not a private TMPDIR.
    base = Path(tempfile.mkdtemp(prefix="mariadb-", dir="/tmp" if as_root else None))
    base.chmod(0o755)
    datadir, run, tmp = base / "data", base / "run", base / "tmp"
    for path in (datadir, run, tmp):
        path.mkdir()
    user_args: list[str] = []
    if as_root:
        mysql = pwd.getpwnam("mysql")
        for path in (datadir, run, tmp):
            os.chown(path, mysql.pw_uid, mysql.pw_gid)
        user_args = ["--user=mysql"]
    install = subprocess.run(
        [
            INSTALL_DB,
            "--no-defaults",
            f"--datadir={datadir}",
            *user_args,
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if install.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"mariadb-install-db failed:\n{install.stdout}\n{install.stderr}")
    sock, port, error_log = run / "mysqld.sock", _free_port(), run / "error.log"
    argv = [
        MARIADBD,
        "--no-defaults",
        f"--datadir={datadir}",
        f"--socket={sock}",
        f"--port={port}",
        "--bind-address=127.0.0.1",
        f"--pid-file={run / 'mysqld.pid'}",
        f"--log-error={error_log}",
        # Its own temporary tables: one in the shared /tmp went missing under a running server
        # (CI: "Error on delete of '/tmp/#sql-temptable-...MAD' (Errcode: 2)").
        f"--tmpdir={tmp}",
        "--skip-name-resolve",
        "--max-connections=1000",
        "--character-set-server=utf8mb4",
        *user_args,
        *extra_args,
    ]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        root = _wait_until_up(process, sock, error_log, timeout)
    except RuntimeError:
        shutil.rmtree(base, ignore_errors=True)
        raise
    password = secrets.token_urlsafe(16)
    with contextlib.closing(root), root.cursor() as cursor:
        cursor.execute("CREATE DATABASE scheduler CHARACTER SET utf8mb4")
        cursor.execute("CREATE USER 'scheduler'@'127.0.0.1' IDENTIFIED BY %s", (password,))
        # A throwaway server: the test user may create the fresh databases each test needs.
        cursor.execute("GRANT ALL PRIVILEGES ON *.* TO 'scheduler'@'127.0.0.1'")
    settings = DatabaseSettings("127.0.0.1", port, "scheduler", password, "scheduler", str(sock))
    return MariaDBServer(base, process, settings, argv)


def _wait_until_up(
    process: subprocess.Popen[bytes], sock: Path, error_log: Path, timeout: float
) -> pymysql.connections.Connection:
    """A root connection over the socket once mariadbd answers; RuntimeError if it exits or stays silent."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"mariadbd exited with {process.returncode}:\n{_log_tail(error_log)}")
        try:
            return pymysql.connect(unix_socket=str(sock), user="root", password="", autocommit=True)
        except pymysql.err.OperationalError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"mariadbd did not answer in {timeout} s:\n{_log_tail(error_log)}") from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    server = start_server(("--innodb-flush-log-at-trx-commit=2", "--innodb-buffer-pool-size=64M"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mariadb(mariadb_server: MariaDBServer) -> DatabaseSettings:
    """Connection settings (host, port, user, password, database) of the session's MariaDB."""
    return mariadb_server.settings


@pytest.fixture
def mariadb_database(mariadb_server: MariaDBServer) -> Iterator[DatabaseSettings]:
    """A fresh, empty database on the session's server, dropped after the test."""
    settings = mariadb_server.create_database()
    try:
        yield settings
    finally:
        mariadb_server.drop_database(settings.database)


@pytest.fixture(scope="module")
def mariadb_module_database(mariadb_server: MariaDBServer) -> Iterator[DatabaseSettings]:
    """A fresh database shared by one test module."""
    settings = mariadb_server.create_database()
    try:
        yield settings
    finally:
        mariadb_server.drop_database(settings.database)
