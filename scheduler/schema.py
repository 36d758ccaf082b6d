"""Create or upgrade the schema in place, idempotently.

The tables are upstream's (initial_tables.sql plus its upgrade scripts up to 6.2.0), column for column, so a
database an upstream scheduler created is adopted as it is, and an upstream scheduler could still read ours.
Dispatch bookkeeping lives in extra nullable columns that upstream's code never selects. The one deliberate
difference is the character set: utf8mb4 instead of 3-byte utf8, so any Unicode name is stored. Upgrades are
decided by looking at the live schema, not by a version stamp, so running `migrate` twice is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)

# The upstream schema level this database matches after migrate; written to version_history so an
# upstream scheduler started on it later would not re-run 6.2.0.sql (which resets created_at).
UPSTREAM_SCHEMA_VERSION = "6.2.0"


@dataclass(frozen=True)
class Column:
    name: str
    mysql: str
    sqlite: str


# Columns upstream's code ignores. The draft columns are cleared as soon as a run leaves `pending`.
EXTRA_SCRIPT_LOG_COLUMNS: tuple[Column, ...] = (
    Column("script_content", "longtext CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci DEFAULT NULL", "TEXT"),
    Column("draft_api_token", "text DEFAULT NULL", "TEXT"),
    Column("claimed_by", "varchar(255) DEFAULT NULL", "TEXT"),
    Column("lease_until", "datetime(6) DEFAULT NULL", "DATETIME"),
    Column("sandbox_node", "varchar(255) DEFAULT NULL", "TEXT"),
    Column("attempt", "int(11) DEFAULT 0", "INTEGER DEFAULT 0"),
    Column("dispatched_at", "datetime(6) DEFAULT NULL", "DATETIME"),
    # What ended the run, as one word (scheduler/outcomes.py); NULL for rows finished before it existed.
    Column("outcome", "varchar(20) DEFAULT NULL", "TEXT"),
    # SHA-256 (hex) of the secret the run's callbacks must present; set at hand-off (scheduler.callback_auth).
    Column("callback_secret_hash", "char(64) DEFAULT NULL", "TEXT"),
)

# Columns added by upstream's 6.2.0.sql, needed when adopting an older database.
UPSTREAM_62_COLUMNS: tuple[Column, ...] = (
    Column("state", "varchar(10) DEFAULT NULL", "TEXT"),
    Column("created_at", "datetime(6) DEFAULT NULL", "DATETIME"),
)

STATISTICS_TABLES = (
    "dtable_run_script_statistics",
    "user_run_script_statistics",
    "org_run_script_statistics",
)

_MYSQL_TABLES: dict[str, str] = {
    "script_log": """CREATE TABLE IF NOT EXISTS `script_log` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `dtable_uuid` varchar(36) NOT NULL,
  `owner` varchar(255) DEFAULT NULL,
  `org_id` int(11) DEFAULT NULL,
  `script_name` varchar(255) NOT NULL,
  `context_data` longtext DEFAULT NULL,
  `started_at` datetime(6) DEFAULT NULL,
  `finished_at` datetime(6) DEFAULT NULL,
  `success` tinyint(1) DEFAULT NULL,
  `return_code` int(11) DEFAULT NULL,
  `output` longtext CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci DEFAULT NULL,
  `operate_from` varchar(50) DEFAULT NULL COMMENT 'manualy, automation-rule...etc',
  `state` varchar(10) DEFAULT NULL,
  `created_at` datetime(6) DEFAULT NULL,
  {extras},
  PRIMARY KEY (`id`),
  KEY `started_at_c6ns09vt` (`started_at`),
  KEY `dtable_uuid_script_name_l0j7h5f2_union_key` (`dtable_uuid`,`script_name`),
  KEY `state_h3u8i9o1_key` (`state`),
  KEY `created_at_h3u7y9o4_key` (`created_at`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci""",
    "dtable_run_script_statistics": """CREATE TABLE IF NOT EXISTS `dtable_run_script_statistics` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `dtable_uuid` varchar(36) NOT NULL,
  `run_date` date NOT NULL,
  `total_run_count` int(11) DEFAULT 0,
  `total_run_time` float DEFAULT 0,
  `update_at` datetime(6) DEFAULT NULL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `dtable_uuid_run_date_k2n9j3p1_uniq_key` (`dtable_uuid`,`run_date`),
  KEY `dtable_uuid_n3b5u4d1_key` (`dtable_uuid`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci""",
    "user_run_script_statistics": """CREATE TABLE IF NOT EXISTS `user_run_script_statistics` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `username` varchar(255) NOT NULL,
  `org_id` int(11) DEFAULT NULL,
  `run_date` date NOT NULL,
  `total_run_count` int(11) DEFAULT 0,
  `total_run_time` float DEFAULT 0,
  `update_at` datetime(6) DEFAULT NULL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `username_run_date_n3x0p2i8_uniq_key` (`username`,`run_date`),
  KEY `username_m0o1g4d0_key` (`username`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci""",
    "org_run_script_statistics": """CREATE TABLE IF NOT EXISTS `org_run_script_statistics` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `org_id` int(11) NOT NULL,
  `run_date` date NOT NULL,
  `total_run_count` int(11) DEFAULT 0,
  `total_run_time` float DEFAULT 0,
  `update_at` datetime(6) DEFAULT NULL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `org_id_run_date_a0g6y5r4_uniq_key` (`org_id`,`run_date`),
  KEY `org_id_v4b5h2d9_key` (`org_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci""",
    "version_history": """CREATE TABLE IF NOT EXISTS `version_history` (
  `version` varchar(10) NOT NULL,
  `update_at` datetime(6) DEFAULT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci""",
    # Ours, not upstream's: which team was told about the rate limit in which window, so several
    # dispatchers send SeaTable one notification per team per window.
    "exceeded_notification": """CREATE TABLE IF NOT EXISTS `exceeded_notification` (
  `team` varchar(255) NOT NULL,
  `window_start` bigint NOT NULL,
  `created_at` datetime(6) DEFAULT NULL,
  PRIMARY KEY (`team`, `window_start`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci""",
    # Ours: run counters for /metrics, bumped with the change they count (scheduler/counters.py).
    "run_counter": """CREATE TABLE IF NOT EXISTS `run_counter` (
  `name` varchar(32) NOT NULL,
  `label` varchar(32) NOT NULL DEFAULT '',
  `shard` smallint NOT NULL,
  `value` bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (`name`, `label`, `shard`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci""",
}

_SQLITE_TABLES: dict[str, str] = {
    "script_log": """CREATE TABLE IF NOT EXISTS script_log (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  dtable_uuid TEXT NOT NULL,
  owner TEXT,
  org_id INTEGER,
  script_name TEXT NOT NULL,
  context_data TEXT,
  started_at DATETIME,
  finished_at DATETIME,
  success BOOLEAN,
  return_code INTEGER,
  output TEXT,
  operate_from TEXT,
  state TEXT,
  created_at DATETIME,
  {extras}
)""",
    "dtable_run_script_statistics": """CREATE TABLE IF NOT EXISTS dtable_run_script_statistics (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  dtable_uuid TEXT NOT NULL,
  run_date DATE NOT NULL,
  total_run_count INTEGER DEFAULT 0,
  total_run_time REAL DEFAULT 0,
  update_at DATETIME,
  UNIQUE (dtable_uuid, run_date)
)""",
    "user_run_script_statistics": """CREATE TABLE IF NOT EXISTS user_run_script_statistics (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  username TEXT NOT NULL,
  org_id INTEGER,
  run_date DATE NOT NULL,
  total_run_count INTEGER DEFAULT 0,
  total_run_time REAL DEFAULT 0,
  update_at DATETIME,
  UNIQUE (username, run_date)
)""",
    "org_run_script_statistics": """CREATE TABLE IF NOT EXISTS org_run_script_statistics (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  org_id INTEGER NOT NULL,
  run_date DATE NOT NULL,
  total_run_count INTEGER DEFAULT 0,
  total_run_time REAL DEFAULT 0,
  update_at DATETIME,
  UNIQUE (org_id, run_date)
)""",
    "version_history": """CREATE TABLE IF NOT EXISTS version_history (
  version TEXT NOT NULL,
  update_at DATETIME
)""",
    "exceeded_notification": """CREATE TABLE IF NOT EXISTS exceeded_notification (
  team TEXT NOT NULL,
  window_start INTEGER NOT NULL,
  created_at DATETIME,
  PRIMARY KEY (team, window_start)
)""",
    "run_counter": """CREATE TABLE IF NOT EXISTS run_counter (
  name TEXT NOT NULL,
  label TEXT NOT NULL DEFAULT '',
  shard INTEGER NOT NULL,
  value INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (name, label, shard)
)""",
}

# The dispatcher's queries: a team's oldest pending runs in id order (InnoDB appends the primary key to
# every secondary index, so (state, org_id) serves "state = pending AND org_id = X ORDER BY id"), and the
# runs handed out in the fair-share window.
DISPATCH_INDEXES: dict[str, tuple[str, str]] = {
    "dispatch_org_k": ("script_log", "state, org_id"),
    "dispatch_owner_k": ("script_log", "state, owner"),
    "dispatched_at_k": ("script_log", "dispatched_at"),
}

_SQLITE_INDEXES = (
    "CREATE INDEX IF NOT EXISTS started_at_c6ns09vt ON script_log (started_at)",
    "CREATE INDEX IF NOT EXISTS dtable_uuid_script_name_l0j7h5f2_union_key ON script_log (dtable_uuid, script_name)",
    "CREATE INDEX IF NOT EXISTS state_h3u8i9o1_key ON script_log (state)",
    "CREATE INDEX IF NOT EXISTS created_at_h3u7y9o4_key ON script_log (created_at)",
)

_MYSQL_62_INDEXES = {
    "state_h3u8i9o1_key": "ALTER TABLE `script_log` ADD INDEX `state_h3u8i9o1_key` (`state`)",
    "created_at_h3u7y9o4_key": "ALTER TABLE `script_log` ADD INDEX `created_at_h3u7y9o4_key` (`created_at`)",
}


class SchemaConnection:
    """The few operations migrate needs, over a plain DB-API connection of either backend."""

    def __init__(self, connection: Any, mysql: bool) -> None:
        self.connection = connection
        self.mysql = mysql
        self.param = "%s" if mysql else "?"

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self.connection.cursor()
        try:
            cursor.execute(sql.replace("%s", self.param) if not self.mysql else sql, tuple(params))
            return list(cursor.fetchall()) if cursor.description else []
        finally:
            cursor.close()

    def tables(self) -> set[str]:
        if self.mysql:
            rows = self.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()")
        else:
            rows = self.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {str(r[0]).lower() for r in rows}

    def columns(self, table: str) -> dict[str, dict[str, Any]]:
        if self.mysql:
            rows = self.execute(
                "SELECT column_name, is_nullable, character_set_name FROM information_schema.columns "
                "WHERE table_schema = DATABASE() AND table_name = %s",
                (table,),
            )
            return {str(r[0]).lower(): {"nullable": r[1] == "YES", "charset": r[2]} for r in rows}
        rows = self.execute(f"PRAGMA table_info({table})")
        return {str(r[1]).lower(): {"nullable": not r[3], "charset": None} for r in rows}

    def indexes(self, table: str) -> set[str]:
        if self.mysql:
            rows = self.execute(
                "SELECT DISTINCT index_name FROM information_schema.statistics "
                "WHERE table_schema = DATABASE() AND table_name = %s",
                (table,),
            )
        else:
            rows = self.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = %s", (table,))
        return {str(r[0]) for r in rows}


def _extras(mysql: bool) -> str:
    if mysql:
        return ",\n  ".join(f"`{c.name}` {c.mysql}" for c in EXTRA_SCRIPT_LOG_COLUMNS)
    return ",\n  ".join(f"{c.name} {c.sqlite}" for c in EXTRA_SCRIPT_LOG_COLUMNS)


def _add_column(conn: SchemaConnection, table: str, column: Column) -> None:
    log.info("adding column %s.%s", table, column.name)
    if conn.mysql:
        conn.execute(f"ALTER TABLE `{table}` ADD COLUMN `{column.name}` {column.mysql}")
    else:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column.name} {column.sqlite}")


def _convert_to_utf8mb4(conn: SchemaConnection) -> list[str]:
    """Upstream's tables are 3-byte utf8: an emoji in a script name or owner would fail with a 500.

    Converting keeps the general (case-insensitive) comparison upstream had; it rebuilds the table once.
    """
    done = []
    rows = conn.execute(
        "SELECT table_name, table_collation FROM information_schema.tables WHERE table_schema = DATABASE()"
    )
    collations = {str(name).lower(): str(collation or "") for name, collation in rows}
    for table in (*STATISTICS_TABLES, "script_log"):
        if not collations.get(table, "utf8mb4").startswith("utf8mb4"):
            log.info("converting %s to utf8mb4", table)
            conn.execute(f"ALTER TABLE `{table}` CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
            done.append(f"{table} utf8mb4")
    return done


def _upgrade_script_log(conn: SchemaConnection) -> list[str]:
    done: list[str] = []
    columns = conn.columns("script_log")
    if conn.mysql and not columns["started_at"]["nullable"]:
        # 6.2.0: a pending run has no start time yet.
        conn.execute("ALTER TABLE `script_log` MODIFY `started_at` datetime(6) DEFAULT NULL")
        done.append("script_log.started_at nullable")
    if conn.mysql and (columns["output"]["charset"] or "").lower() != "utf8mb4":
        conn.execute(
            "ALTER TABLE `script_log` CHANGE `output` `output` "
            "LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        )
        done.append("script_log.output utf8mb4")
    for column in (*UPSTREAM_62_COLUMNS, *EXTRA_SCRIPT_LOG_COLUMNS):
        if column.name not in columns:
            _add_column(conn, "script_log", column)
            done.append(f"script_log.{column.name}")
            if column.name == "created_at":
                conn.execute("UPDATE script_log SET created_at = started_at WHERE created_at IS NULL")
    if conn.mysql:
        existing = conn.indexes("script_log")
        for name, sql in _MYSQL_62_INDEXES.items():
            if name not in existing:
                conn.execute(sql)
                done.append(f"index {name}")
    else:
        for sql in _SQLITE_INDEXES:
            conn.execute(sql)
    # Rows written before 6.2.0 have no state; the finished ones can say so. The others stay NULL,
    # so no dispatcher ever picks them up (they may have run).
    conn.execute("UPDATE script_log SET state = 'finished' WHERE state IS NULL AND finished_at IS NOT NULL")
    return done


def _dispatch_indexes(conn: SchemaConnection) -> list[str]:
    done = []
    existing = conn.indexes("script_log")
    for name, (table, columns) in DISPATCH_INDEXES.items():
        if name in existing:
            continue
        if conn.mysql:
            conn.execute(f"ALTER TABLE `{table}` ADD INDEX `{name}` ({columns})")
        else:
            conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({columns})")
        done.append(f"index {name}")
    return done


def _version_tuple(text: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(p) for p in text.strip().split("."))
    except ValueError:
        return None


def _stamp_version(conn: SchemaConnection, now: Callable[[], datetime]) -> bool:
    rows = conn.execute("SELECT version FROM version_history ORDER BY update_at DESC LIMIT 1")
    current = _version_tuple(str(rows[0][0])) if rows else None
    wanted = _version_tuple(UPSTREAM_SCHEMA_VERSION)
    if current is not None and wanted is not None and current >= wanted:
        return False
    conn.execute(
        "INSERT INTO version_history (version, update_at) VALUES (%s, %s)",
        (UPSTREAM_SCHEMA_VERSION, now().replace(microsecond=0)),
    )
    return True


def migrate(conn: SchemaConnection, now: Callable[[], datetime] = datetime.now) -> list[str]:
    """Bring the schema to the current level; returns what was changed (empty when nothing was)."""
    done: list[str] = []
    existing = conn.tables()
    ddl = _MYSQL_TABLES if conn.mysql else _SQLITE_TABLES
    for table, sql in ddl.items():
        if table not in existing:
            conn.execute(sql.replace("{extras}", _extras(conn.mysql)))
            done.append(f"created {table}")
    if "org_id" not in conn.columns("user_run_script_statistics"):
        _add_column(conn, "user_run_script_statistics", Column("org_id", "int(11) DEFAULT NULL", "INTEGER"))
        done.append("user_run_script_statistics.org_id")
    if conn.mysql:
        done += _convert_to_utf8mb4(conn)
    done += _upgrade_script_log(conn)
    done += _dispatch_indexes(conn)
    if _stamp_version(conn, now):
        done.append(f"version_history {UPSTREAM_SCHEMA_VERSION}")
    conn.connection.commit()
    return done
