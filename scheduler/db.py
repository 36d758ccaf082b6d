"""Database access, the one module that knows Pony: binding, the entities, sessions and retried transactions.

Everything else reaches the database through a `Store`: `write(fn)` runs `fn` as one transaction (re-run whole
after deadlocks and Galera certification conflicts), `reading()` opens a read session, and `select`, `execute`
and `insert` run SQL inside either. SQL names its parameters `$name` (Pony's syntax, for both backends).
`select` answers a list: of plain values for one column, else of rows whose columns are also attributes.
The run's state changes are `scheduler.lifecycle`'s; the named reads are `scheduler.queries`'.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeVar

import pymysql
from pony.orm import Database, LongStr, Optional, PrimaryKey, Required, db_session
from pony.orm.core import TransactionError
from pony.orm.dbapiprovider import OperationalError

from scheduler import galera
from scheduler.clock import Clock, zone
from scheduler.config import Config
from scheduler.schema import SchemaConnection, migrate

log = logging.getLogger(__name__)
T = TypeVar("T")

# MariaDB deadlock and lock wait timeout; SQLite "database is locked" also arrives as OperationalError.
# On Galera, 1213 is also how a transaction that lost certification to another node's ends (scheduler/galera.py).
_RETRYABLE_MYSQL_CODES = {1205, 1213}
MAX_RETRY_PAUSE = 0.5  # seconds; the pauses grow 10, 20, 40 ms ... with full jitter


@dataclass(frozen=True)
class Entities:
    db: Database
    ScriptLog: Any
    DTableStats: Any
    UserStats: Any
    OrgStats: Any
    VersionHistory: Any


def define_entities(db: Database) -> Entities:
    """Declare Pony entities over upstream's tables on `db` (before `generate_mapping`, which checks them
    against the schema). Defined per `Database`, not at import time, so one process can hold several databases
    (tests run the same code against SQLite and MariaDB side by side)."""

    class ScriptLog(db.Entity):
        _table_ = "script_log"
        id = PrimaryKey(int, auto=True)
        dtable_uuid = Required(str, 36)
        owner = Optional(str, 255, nullable=True)
        org_id = Optional(int, nullable=True)
        script_name = Required(str, 255)
        context_data = Optional(LongStr, nullable=True)
        started_at = Optional(datetime, precision=6, nullable=True)
        finished_at = Optional(datetime, precision=6, nullable=True)
        success = Optional(bool, nullable=True)
        return_code = Optional(int, nullable=True)
        output = Optional(LongStr, nullable=True)
        operate_from = Optional(str, 50, nullable=True)
        state = Optional(str, 10, nullable=True)
        created_at = Optional(datetime, precision=6, nullable=True)
        # Not in upstream's schema; upstream's code never selects these.
        script_content = Optional(LongStr, nullable=True, lazy=True)
        draft_api_token = Optional(LongStr, nullable=True, lazy=True)
        claimed_by = Optional(str, 255, nullable=True)
        lease_until = Optional(datetime, precision=6, nullable=True)
        sandbox_node = Optional(str, 255, nullable=True)
        attempt = Optional(int, nullable=True, default=0)
        dispatched_at = Optional(datetime, precision=6, nullable=True)
        outcome = Optional(str, 20, nullable=True)
        callback_secret_hash = Optional(str, 64, nullable=True)

    class DTableStats(db.Entity):
        _table_ = "dtable_run_script_statistics"
        id = PrimaryKey(int, auto=True)
        dtable_uuid = Required(str, 36)
        run_date = Required(date)
        total_run_count = Optional(int, default=0)
        total_run_time = Optional(float, default=0)
        update_at = Optional(datetime, precision=6, nullable=True)

    class UserStats(db.Entity):
        _table_ = "user_run_script_statistics"
        id = PrimaryKey(int, auto=True)
        username = Required(str, 255)
        org_id = Optional(int, nullable=True)
        run_date = Required(date)
        total_run_count = Optional(int, default=0)
        total_run_time = Optional(float, default=0)
        update_at = Optional(datetime, precision=6, nullable=True)

    class OrgStats(db.Entity):
        _table_ = "org_run_script_statistics"
        id = PrimaryKey(int, auto=True)
        org_id = Required(int)
        run_date = Required(date)
        total_run_count = Optional(int, default=0)
        total_run_time = Optional(float, default=0)
        update_at = Optional(datetime, precision=6, nullable=True)

    class VersionHistory(db.Entity):
        # The table has no key; Pony needs one, and (version, update_at) is unique in practice.
        _table_ = "version_history"
        version = Required(str, 10)
        update_at = Required(datetime, precision=6)
        PrimaryKey(version, update_at)

    return Entities(db, ScriptLog, DTableStats, UserStats, OrgStats, VersionHistory)


@dataclass
class Store:
    """One bound database with its entities and the clock its timestamps are written in."""

    db: Database
    entities: Entities
    mysql: bool
    clock: Clock
    sqlite_path: str | None = None

    @contextmanager
    def reading(self) -> Iterator[None]:
        """A read session: the `select`s inside it see one connection (and, in a transaction, one snapshot)."""
        with db_session:
            yield

    def select(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Rows of `sql`, inside `reading()` or `write()`."""
        return list(self.db.select(sql, params or {}))

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> int:
        """Run a writing statement inside `write()`; the number of rows it changed."""
        return int(self.db.execute(sql, params or {}).rowcount)

    def insert(self, table: str, returning: str, **values: Any) -> int:
        """Insert one row inside `write()`; the value of its `returning` column (the new id)."""
        return int(self.db.insert(table, returning=returning, **values))

    def seconds_between(self, start: str, end: str) -> str:
        """SQL for the seconds from timestamp `start` to `end`, in this backend's dialect."""
        if self.mysql:
            return f"TIMESTAMPDIFF(MICROSECOND, {start}, {end}) / 1000000"
        return f"(julianday({end}) - julianday({start})) * 86400.0"

    def on_mysql_connect(self, setup: Callable[[Any], None]) -> None:
        """Run `setup(connection)` (a DB-API connection) on every new MariaDB connection; no-op on SQLite."""
        if not self.mysql:
            return

        @self.db.on_connect(provider="mysql")
        def _setup(_db: Database, connection: Any) -> None:
            setup(connection)

    def write(self, fn: Callable[[], T], attempts: int = 10) -> T:
        """Run `fn` in its own transaction, re-running it whole after deadlocks, certification failures and
        busy databases. `fn`'s result is returned only once its transaction committed."""
        for attempt in range(1, attempts + 1):
            try:
                with db_session(optimistic=False):
                    return fn()
            except (OperationalError, TransactionError) as exc:
                if attempt == attempts or not _retryable(exc):
                    raise
                log.debug("retrying transaction after %s", exc)
                # Random pauses, so two transactions that conflicted do not meet again at the same moment.
                time.sleep(random.uniform(0, min(MAX_RETRY_PAUSE, 0.01 * 2 ** (attempt - 1))))
        raise AssertionError("unreachable")

    def scrub(self) -> bool:
        """Move SQLite's write-ahead log into the file and empty it: erased values (draft tokens) leave the disk.

        secure_delete (set on every connection) zeroes what an UPDATE or DELETE frees in the file's pages; the
        WAL still holds older page images until a checkpoint that truncates it. Without waiting for readers
        (it never stalls a caller): False when one kept it from finishing; the maintenance loop repeats it."""
        if self.sqlite_path is None:
            return True  # MariaDB: an UPDATE to NULL is the erasure
        connection = sqlite3.connect(self.sqlite_path, timeout=0)
        try:
            busy, _frames, _moved = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            return not busy
        except sqlite3.OperationalError as exc:
            log.debug("WAL checkpoint deferred: %s", exc)
            return False
        finally:
            connection.close()

    def disconnect(self) -> None:
        self.db.disconnect()


def in_list(prefix: str, values: list[Any]) -> tuple[str, dict[str, Any]]:
    """`$p0, $p1, ...` for an IN (...) list, and the parameters they name."""
    names = [f"{prefix}{i}" for i in range(len(values))]
    return ", ".join("$" + n for n in names), dict(zip(names, values, strict=True))


def _retryable(exc: Exception) -> bool:
    inner = getattr(exc, "exceptions", None)  # Pony's CommitException wraps the driver's exception info
    if inner:
        return any(_retryable(info[1]) for info in inner if isinstance(info[1], Exception))
    original = getattr(exc, "original_exc", None) or exc.__cause__ or exc
    args = getattr(original, "args", ())
    if args and isinstance(args[0], int):
        return args[0] in _RETRYABLE_MYSQL_CODES
    return "locked" in str(original) or "deadlock" in str(original).lower()


def _mysql_credentials(config: Config, admin: bool = False) -> dict[str, Any]:
    """DB_USER's, or with `admin` (migrate only) DB_ROOT_USER's when its password is set."""
    use_root = admin and bool(config.db_root_user)
    return {
        "host": config.db_host,
        "port": config.db_port,
        "user": config.db_root_user if use_root else config.db_user,
        "password": config.db_root_passwd if use_root else config.db_passwd,
        "charset": "utf8mb4",  # output may hold any Unicode; Pony's default utf8 is 3-byte only
    }


# What the serving processes do; schema changes are migrate's (as DB_ROOT_USER).
SERVICE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"


def _grant_service_user(cursor: Any, config: Config) -> None:
    """Give DB_USER (made when missing) the serving processes' rights on the database, no more."""
    if not config.db_root_user or not config.db_user or config.db_user == config.db_root_user:
        return
    cursor.execute("CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s", (config.db_user, config.db_passwd))
    cursor.execute(f"GRANT {SERVICE_PRIVILEGES} ON `{config.database_name.replace('`', '')}`.* TO %s@'%%'",
                   (config.db_user,))


def open_store(config: Config, check_tables: bool = True) -> Store:
    """Bind Pony and map the entities; the schema must exist (`seatable-scheduler migrate`)."""
    db = Database()
    config.require_service_database()
    if config.uses_mysql:

        @db.on_connect(provider="mysql")  # before bind: its first connection gets the setting too
        def _causal_reads(_db: Database, connection: Any) -> None:
            galera.causal_reads(connection)

        db.bind(provider="mysql", database=config.database_name, autocommit=False, **_mysql_credentials(config))
    else:
        db.bind(provider="sqlite", filename=os.path.abspath(config.sqlite_path), create_db=False, timeout=30)

        @db.on_connect(provider="sqlite")
        def _tune(_db: Database, connection: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA busy_timeout = 30000")
            cursor.execute("PRAGMA secure_delete = ON")  # erased draft tokens are zeroed, not just unlinked

    entities = define_entities(db)
    db.generate_mapping(create_tables=False, check_tables=check_tables)
    if check_tables:
        db.disconnect()  # do not hand an open connection to forked workers
    return Store(db, entities, config.uses_mysql, Clock(zone(config.time_zone)),
                 None if config.uses_mysql else os.path.abspath(config.sqlite_path))


def schema_connection(config: Config) -> SchemaConnection:
    """A plain DB-API connection for migrate, creating the database (or file) when allowed."""
    if config.uses_mysql:
        conn = pymysql.connect(**_mysql_credentials(config, admin=True), autocommit=False)
        try:
            with conn.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{config.database_name.replace('`', '')}`")
        except pymysql.err.MySQLError as exc:  # an unprivileged DB_USER may still own an existing database
            log.info("cannot create database %s: %s", config.database_name, exc)
        with conn.cursor() as cursor:
            _grant_service_user(cursor, config)
        conn.select_db(config.database_name)
        return SchemaConnection(conn, mysql=True)
    directory = os.path.dirname(os.path.abspath(config.sqlite_path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    _private_file(config.sqlite_path)
    conn_sqlite = sqlite3.connect(config.sqlite_path)
    conn_sqlite.execute("PRAGMA journal_mode = WAL")  # readers never wait for the one writer
    return SchemaConnection(conn_sqlite, mysql=False)


def _private_file(path: str) -> None:
    """The database file exists 0600 before SQLite opens it (its -wal and -shm files take the same mode)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):  # left by an older version with the umask's mode
        try:
            fd = os.open(path + suffix, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)


def run_migrate(config: Config) -> list[str]:
    conn = schema_connection(config)
    try:
        return migrate(conn, Clock(zone(config.time_zone)).now)
    finally:
        conn.connection.close()
