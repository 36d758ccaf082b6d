"""The whole path with real processes: stand-in SeaTable, gunicorn scheduler on MariaDB, dispatcher,
sandbox as the unprivileged user, rootless Podman, the real seatable-api client inside the runner."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support.mariadb import DatabaseSettings
from tests.support.pipeline import REPO, Pipeline

OWNER = "bob@auth.local"

WRITE_ROW = '''\
from seatable_api import Base, context
base = Base(context.api_token, context.server_url)
base.auth()
row = base.append_row(context.current_table, {"Name": "from " + context.current_row["Name"]})
print("wrote", row["_id"])
'''


@pytest.fixture(scope="module")
def pipeline(mariadb_module_database: DatabaseSettings, runner_image: str) -> Iterator[Pipeline]:
    """The whole pipeline on MariaDB, its sandbox running runners of the installed image."""
    with Pipeline(say=lambda _text: None, db_env=mariadb_module_database.env(),
                  sandbox_env={"PYTHON_PROCESS_TIMEOUT": "30", "PYTHON_STARTER_THREAD_COUNT": "6"}) as started:
        yield started


def test_a_user_click_writes_a_row_and_is_counted(pipeline: Pipeline) -> None:
    assert pipeline.stub is not None
    seatable = pipeline.stub.seatable
    base = seatable.add_base(name="E2E", tables=("Table1",))
    seatable.add_script(base.uuid, "write.py", WRITE_ROW)
    final = pipeline.button(poll_interval=0.2).run(
        base.uuid, "write.py", owner=OWNER, org_id=42,
        context_data={"table": "Table1", "row": {"Name": "Grace"}}, deadline=120)
    assert final["state"] == "finished", final
    assert final["success"] is True and final["return_code"] == 0, final["output"]
    rows = seatable.rows(base.uuid, "Table1")
    assert [r["Name"] for r in rows] == ["from Grace"]
    assert final["output"] == f"wrote {rows[0]['_id']}\n"
    # exactly what dtable-web's page polls
    polled = pipeline.get(f"/run-script/{final['id']}/", dtable_uuid=base.uuid36, script_name="write.py")
    assert polled["script"]["state"] == "finished" and polled["script"]["output"] == final["output"]
    month = time.strftime("%Y-%m")
    by_user = pipeline.get("/admin/statistics/scripts-running/by-user/", month=month)["results"]
    by_org = pipeline.get("/admin/statistics/scripts-running/by-org/", month=month)["results"]
    by_base = pipeline.get("/admin/statistics/scripts-running/by-base/", month=month)["results"]
    assert [r["total_run_count"] for r in by_user if r["username"] == OWNER] == [1]
    assert [r["total_run_count"] for r in by_org if r["org_id"] == 42] == [1]
    assert [r["total_run_count"] for r in by_base if r["base_uuid"].replace("-", "") == base.uuid] == [1]
    # the one-time script URL was fetched exactly once
    urls = seatable.script_urls(base.uuid, "write.py")
    assert [u.fetch_count for u in urls] == [1]


def test_expired_temp_api_token_ends_the_run_with_a_clear_error(pipeline: Pipeline) -> None:
    assert pipeline.stub is not None
    seatable = pipeline.stub.seatable
    base = seatable.add_base(name="Expired", tables=("Table1",))
    seatable.add_script(base.uuid, "write.py", WRITE_ROW)
    seatable.temp_api_token_ttl = 0  # SeaTable hands out a token that has already expired
    try:
        final = pipeline.button(poll_interval=0.2).run(
            base.uuid, "write.py", owner=OWNER, context_data={"table": "Table1", "row": {"Name": "x"}},
            deadline=120)
    finally:
        seatable.temp_api_token_ttl = 3600
    assert final["state"] == "finished" and final["success"] is False
    assert "AuthExpiredError" in final["output"] or "Token expired" in final["output"], final["output"]
    assert seatable.rows(base.uuid, "Table1") == []


def test_twenty_runs_from_four_teams_keep_their_own_output(pipeline: Pipeline) -> None:
    assert pipeline.stub is not None
    seatable = pipeline.stub.seatable
    base = seatable.add_base(name="Busy", tables=("Table1",))
    script = ("import time\nfrom seatable_api import context\n"
              "time.sleep(0.3)\nprint('marker', context.current_row['n'])\n")
    seatable.add_script(base.uuid, "marker.py", script)
    button = pipeline.button(poll_interval=0.3)

    def click(n: int) -> dict[str, Any]:
        return button.run(base.uuid, "marker.py", owner=f"user{n % 4}@auth.local", org_id=100 + n % 4,
                          context_data={"table": "Table1", "row": {"n": n}}, deadline=240)

    with ThreadPoolExecutor(max_workers=20) as pool:
        finals = list(pool.map(click, range(20)))
    for n, final in enumerate(finals):
        assert final["state"] == "finished" and final["success"] is True, final
        assert final["output"] == f"marker {n}\n"
    assert sorted(u.fetch_count for u in seatable.script_urls(base.uuid, "marker.py")) == [1] * 20


@pytest.mark.timeout(600 + 60)  # ./dev demo is given 600 s below; its setup step is quick when nothing changed
def test_dev_demo_passes(runner_image: str) -> None:
    result = subprocess.run([str(REPO / "dev"), "demo"], capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "demo succeeded" in result.stdout
