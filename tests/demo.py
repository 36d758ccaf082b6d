"""./dev demo: the whole pipeline, and three scripts run the way a SeaTable user runs them.

Embedded defaults: SQLite, one local sandbox node, the SeaTable stand-in on localhost. Exits
non-zero if any step does not turn out as a user would expect.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from tests.seatable_stub.button import StateChange
from tests.support.pipeline import Pipeline

OWNER = "alice@auth.local"
ORG = 7

WRITE_BACK = '''\
from seatable_api import Base, context

row = context.current_row
print(f"Hello {row['Name']}! This runs for table {context.current_table!r}.")
base = Base(context.api_token, context.server_url)
base.auth()
new = base.append_row(context.current_table, {"Name": row["Name"] + " (checked)", "Score": row["Score"] * 2})
print("appended row", new["_id"], "with score", new["Score"])
print("rows in the table now:", len(base.list_rows(context.current_table)))
'''

BARCODE_AND_PANDAS = '''\
import io

import barcode
import pandas as pd
from barcode.writer import ImageWriter

png = io.BytesIO()
barcode.get("ean13", "590123412345", writer=ImageWriter()).write(png)
data = png.getvalue()
print(f"barcode: a {len(data)} byte PNG ({data[1:4].decode()})")

hours = pd.DataFrame({"team": ["red", "blue", "red", "blue", "red"], "hours": [3, 5, 4, 1, 2]})
print(hours.groupby("team")["hours"].agg(["count", "sum"]).to_string())
'''

FAILING = '''\
def average(values):
    return sum(values) / len(values)

print("computing the average of no values...")
print(average([]))
'''


@dataclass
class Step:
    name: str
    script: str
    context: dict[str, Any]
    expect_success: bool
    expect_in_output: tuple[str, ...]


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def run_step(pipeline: Pipeline, uuid: str, step: Step) -> bool:
    say(f"clicking 'Run script' on {step.name} (context: {json.dumps(step.context)})")

    def changed(change: StateChange) -> None:
        say(f"  run {change.script_id}: {change.state or 'pending'} after {change.elapsed:.1f} s")

    started = time.monotonic()
    final = pipeline.button(poll_interval=0.5).run(uuid, step.name, owner=OWNER, org_id=ORG,
                                                   context_data=step.context, on_change=changed, deadline=180)
    elapsed = time.monotonic() - started
    output = final.get("output") or ""
    print("  output:")
    for line in output.rstrip("\n").splitlines():
        print(f"  | {line}")
    say(f"  finished: success={final['success']} return_code={final['return_code']} "
        f"in {elapsed:.1f} s from click to result")
    ok = final["state"] == "finished" and final["success"] is step.expect_success
    missing = [text for text in step.expect_in_output if text not in output]
    if missing or not ok:
        say(f"  UNEXPECTED: success should be {step.expect_success}; missing from output: {missing}")
        return False
    return True


def main() -> int:
    say("SeaTable Python Pipeline demo: stand-in SeaTable -> scheduler -> dispatcher -> rootless sandbox")
    pipeline = Pipeline(say=say, sandbox_env={"PYTHON_PROCESS_TIMEOUT": "60"})
    ok = True
    try:
        pipeline.start()
        assert pipeline.stub is not None
        seatable = pipeline.stub.seatable
        base = seatable.add_base(name="Demo base", tables=("Contacts",))
        seatable.add_rows(base.uuid, "Contacts", [{"Name": "Ada", "Score": 21}])
        steps = [
            Step("write_back.py", WRITE_BACK,
                 {"table": "Contacts", "row": {"Name": "Ada", "Score": 21}, "current_user_id": "alice",
                  "current_username": OWNER, "current_id_in_org": ""},
                 True, ("Hello Ada!", "appended row", "with score 42", "rows in the table now: 2")),
            Step("barcode_and_pandas.py", BARCODE_AND_PANDAS, {"table": "Contacts"}, True,
                 ("barcode: a", "PNG", "red", "blue")),
            Step("failing.py", FAILING, {"table": "Contacts"}, False,
                 ("Traceback (most recent call last):", "ZeroDivisionError")),
        ]
        for step in steps:
            seatable.add_script(base.uuid, step.name, step.script)
        for step in steps:
            ok = run_step(pipeline, base.uuid, step) and ok
        rows = seatable.rows(base.uuid, "Contacts")
        say(f"the base's 'Contacts' table now holds: {[r['Name'] for r in rows]}")
        ok = ok and any(r["Name"] == "Ada (checked)" and r.get("Score") == 42 for r in rows)
        month = time.strftime("%Y-%m")
        for path, params in (("/scripts-running-count/", {"username": OWNER, "month": month}),
                             ("/admin/statistics/scripts-running/by-user/", {"month": month}),
                             ("/admin/statistics/scripts-running/by-org/", {"month": month}),
                             ("/admin/statistics/scripts-running/by-base/", {"month": month}),
                             ("/admin/statistics/by-base/", {"org_id": ORG})):
            say(f"GET {path} {params}")
            print("  " + json.dumps(pipeline.get(path, **params)))
        count = pipeline.get("/scripts-running-count/", username=OWNER, month=month)["count"]
        ok = ok and count == 3
    except Exception as exc:  # the demo says what broke, then fails
        say(f"FAILED: {type(exc).__name__}: {exc}")
        for service in pipeline.services:
            print(f"--- last lines of {service.name} ---\n{service.tail()}")
        if pipeline.sandbox is not None:
            print(f"--- last lines of the sandbox ---\n{pipeline.sandbox.log()[-3000:]}")
        ok = False
    finally:
        say("stopping everything the demo started")
        pipeline.stop()
    say("demo " + ("succeeded" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
