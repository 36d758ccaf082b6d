"""A script run as the runner runs it (env, stdin context, one-time URL) against the stub, no sandbox."""

from __future__ import annotations

import json
import subprocess
import sys

import requests

from tests.seatable_stub import StubServer
from tests.seatable_stub.state import Base

from .conftest import web_headers

SCRIPT = """
from seatable_api import Base, context
base = Base(context.api_token, context.server_url)
base.auth()
row = context.current_row
base.append_row(context.current_table, {"Name": row["Name"] + " done", "By": context.current_username})
print("wrote for", row["_id"])
"""


def test_script_reads_context_and_writes_a_row_back(stub: StubServer, base: Base) -> None:
    stub.seatable.add_script(base.uuid, "mark.py", SCRIPT)
    [row] = stub.seatable.add_rows(base.uuid, "Table1", [{"Name": "Order 1"}])
    task = requests.get(
        f"{stub.url}/api/v2.1/dtable/{base.uuid36}/run-script/mark.py/task/file/",
        headers=web_headers(),
        timeout=5,
    ).json()
    script = requests.get(task["script_url"], timeout=5).text
    context = {"table": "Table1", "row": row, "current_username": "alice@auth.local"}

    result = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(context),
        env={"is_cloud": "1", "dtable_web_url": stub.url, "api_token": task["temp_api_token"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote for {row['_id']}\n"
    names = [(r["Name"], r.get("By")) for r in stub.seatable.rows(base.uuid, "Table1")]
    assert names == [("Order 1", None), ("Order 1 done", "alice@auth.local")]
    assert [u.fetch_count for u in stub.seatable.script_urls(base.uuid, "mark.py")] == [1]
