"""Adopting a database that upstream's scheduler created, with its rows, through the real server."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from scheduler.config import Config
from scheduler.db import open_store
from tests.scheduler.conftest import AUTH, BASE, REPO, TOKEN, RunningServer, hand_off
from tests.support.mariadb import DatabaseSettings, MariaDBServer

FIXTURES = REPO / "tests" / "fixtures"
OLD_BASE = "3f1c0a9e8b7d4c6e9f2a1b0c9d8e7f6a"  # upstream rows may hold the 32-character form



def run_sql_file(db: DatabaseSettings, path: Path) -> None:
    statements = [s.strip() for s in path.read_text().split(";\n") if s.strip()]
    with contextlib.closing(db.connect()) as conn, conn.cursor() as cursor:
        for statement in statements:
            lines = [line for line in statement.splitlines() if not line.startswith("--")]
            if any(line.strip() for line in lines):
                cursor.execute("\n".join(lines).rstrip(";"))


def upstream_database(server: MariaDBServer, at_62: bool) -> DatabaseSettings:
    db = server.create_database()
    run_sql_file(db, FIXTURES / "upstream_initial_tables.sql")
    with contextlib.closing(db.connect()) as conn, conn.cursor() as cursor:
        cursor.execute(
            "INSERT INTO script_log (id, dtable_uuid, owner, org_id, script_name, context_data, started_at, "
            "finished_at, success, return_code, output, operate_from) VALUES "
            "(11, %s, 'alice@auth.local', 7, 'old.py', %s, '2024-01-15 10:00:00.500000', "
            "'2024-01-15 10:00:04.000000', 1, 0, 'done ✓ 🙂', 'manualy'), "
            "(12, %s, 'alice@auth.local', 7, 'old.py', NULL, '2024-07-01 08:30:00', NULL, NULL, NULL, NULL, "
            "'automation-rule')",
            (OLD_BASE, '{"table": "T", "row": {"_id": "x"}}', OLD_BASE),
        )
        cursor.execute(
            "INSERT INTO org_run_script_statistics (org_id, run_date, total_run_count, total_run_time, "
            "update_at) VALUES (7, CURDATE(), 5, 50, NOW())"
        )
        cursor.execute(
            "INSERT INTO dtable_run_script_statistics "
            "(dtable_uuid, run_date, total_run_count, total_run_time) VALUES (%s, CURDATE(), 5, 50)",
            (BASE,),
        )
        cursor.execute("INSERT INTO version_history VALUES ('4.2.7', '2024-01-01 00:00:00')")
    if at_62:
        run_sql_file(db, FIXTURES / "upstream_upgrade_6.2.0.sql")
        with contextlib.closing(db.connect()) as conn, conn.cursor() as cursor:
            cursor.execute(
                "INSERT INTO script_log (id, dtable_uuid, owner, org_id, script_name, state, created_at, "
                "operate_from) VALUES (13, %s, 'alice@auth.local', 7, 'a.py', 'pending', NOW(), 'manualy')",
                (BASE,),
            )
            cursor.execute("INSERT INTO version_history VALUES ('6.2.0', '2025-01-01 00:00:00')")
    return db


def cli_migrate(env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "scheduler.cli", "migrate"],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("at_62", [False, True], ids=["upstream-pre-6.2", "upstream-6.2"])
def test_adopts_upstream_database(
    mariadb_server: MariaDBServer, serve: Callable[[dict[str, str]], RunningServer], at_62: bool
) -> None:
    db = upstream_database(mariadb_server, at_62)
    env = {**db.env(), "PYTHON_SCHEDULER_AUTH_TOKEN": TOKEN, "TIME_ZONE": "Europe/Berlin"}
    first = cli_migrate(env)
    assert "script_log.claimed_by" in first
    assert ("script_log.state" in first) is not at_62
    assert cli_migrate(env).strip() == "migrate: schema is up to date"

    server = serve(env)
    get = lambda path, **params: requests.get(server.url + path, params=params, headers=AUTH, timeout=10)  # noqa: E731
    old = get("/run-script/11/", dtable_uuid=OLD_BASE, script_name="old.py")
    assert old.status_code == 200, old.text
    script = old.json()["script"]
    assert script["started_at"] == "2024-01-15T10:00:00+01:00"  # whole seconds, Berlin winter offset
    assert script["finished_at"] == "2024-01-15T10:00:04+01:00"
    assert (script["success"], script["return_code"], script["output"]) == (True, 0, "done ✓ 🙂")
    assert script["context_data"] == {"table": "T", "row": {"_id": "x"}}
    assert script["state"] == "finished"
    # pre-6.2 created_at was backfilled from started_at, by us or by upstream's 6.2.0.sql
    assert script["created_at"] == "2024-01-15T10:00:00+01:00"
    unfinished = get("/tasks/" + OLD_BASE + "/old.py/logs/12/").json()["task_log"]
    assert unfinished["state"] is None and unfinished["finished_at"] is None  # never picked up as pending
    assert unfinished["started_at"] == "2024-07-01T08:30:00+02:00"
    logs = get(f"/tasks/{OLD_BASE}/old.py/logs/").json()
    assert [log["id"] for log in logs["task_logs"]] == [12, 11] and logs["count"] == 2
    assert get("/scripts-running-count/", org_id=7).json() == {"count": 5}
    runs = get("/admin/runs/", org_id=7).json()
    assert runs["total_count"] == (3 if at_62 else 2)

    # a new run (or upstream's pending one) finishes into the existing statistics rows
    if at_62:
        run_id = 13
    else:
        created = requests.post(
            server.url + "/run-script/",
            json={"dtable_uuid": BASE, "script_name": "a.py", "owner": "alice@auth.local", "org_id": 7},
            headers=AUTH,
            timeout=10,
        )
        run_id = created.json()["script_id"]
        assert run_id > 12
    store = open_store(Config.from_env(env))  # handed off as the dispatcher does: its callbacks need the secret
    secret = hand_off(store, run_id)
    store.disconnect()
    result = requests.post(
        server.url + "/script-result/",
        json={"script_id": run_id, "success": True, "return_code": 0, "output": "", "spend_time": 2},
        headers={"Authorization": f"Token {secret}"},
        timeout=10,
    )
    assert result.json() == {"success": True}
    assert get("/scripts-running-count/", org_id=7).json() == {"count": 6}
    by_base = get("/admin/statistics/scripts-running/by-base/").json()["results"]
    assert by_base == [{"base_uuid": BASE, "total_run_count": 6, "total_run_time": 52}]

    with contextlib.closing(db.connect()) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT version FROM version_history ORDER BY update_at DESC")
        versions = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT is_nullable FROM information_schema.columns WHERE table_schema = DATABASE() "
                       "AND table_name = 'script_log' AND column_name = 'started_at'")  # fmt: skip
        assert cursor.fetchone() == ("YES",)
    assert versions[0] == "6.2.0" and versions.count("6.2.0") == 1
