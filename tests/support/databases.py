"""Migrated scheduler databases: the schema is migrated once per test run, and each test starts empty.

MariaDB: one database migrated at the first use in a run; before each test every table but version_history
(migrate's own record) is emptied and its AUTO_INCREMENT reset, so ids start at 1 as in a fresh database.
SQLite: one file migrated once, copied for each test. Tests that need a database in another state (upstream's
tables, an empty schema) take `mariadb_database` from tests.support.mariadb instead.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest

from scheduler.config import Config
from scheduler.db import run_migrate
from tests.support.mariadb import DatabaseSettings, MariaDBServer

KEPT_TABLES = frozenset({"version_history"})


def empty_tables(settings: DatabaseSettings) -> None:
    """Delete every row but migrate's version record and reset the ids, touching only tables a test used.

    DELETE, not TRUNCATE: TRUNCATE recreates the table (a DDL, slower than a few hundred rows' delete).
    """
    with contextlib.closing(settings.connect()) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT table_name, auto_increment FROM information_schema.tables WHERE table_schema = %s",
                       (settings.database,))
        for table, next_id in cursor.fetchall():
            if table in KEPT_TABLES:
                continue
            if cursor.execute(f"DELETE FROM `{table}`") or (next_id or 1) > 1:
                cursor.execute(f"ALTER TABLE `{table}` AUTO_INCREMENT = 1")


@pytest.fixture(scope="session")
def migrated_mariadb(mariadb_server: MariaDBServer) -> DatabaseSettings:
    """The run's one migrated scheduler database (its state is whatever the last test left: use the next)."""
    settings = mariadb_server.create_database("scheduler_tests")
    run_migrate(Config.from_env(settings.env()))
    return settings


@pytest.fixture
def mariadb_scheduler_database(migrated_mariadb: DatabaseSettings) -> DatabaseSettings:
    """The migrated scheduler database, emptied for this test."""
    empty_tables(migrated_mariadb)
    return migrated_mariadb


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "scheduler.sqlite3"
    run_migrate(Config.from_env({"PYTHON_SCHEDULER_SQLITE_PATH": str(path)}))
    return path


@pytest.fixture
def sqlite_scheduler_database(migrated_sqlite: Path, tmp_path: Path) -> Path:
    """A copy of the migrated SQLite file, this test's own."""
    path = tmp_path / "scheduler.sqlite3"
    shutil.copyfile(migrated_sqlite, path)
    return path
