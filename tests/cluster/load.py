"""The chaos suite's counting load (tests/chaos/load.py), adapted to a cluster.

Runs are submitted through every scheduler API in turn. The script counts its executions in the SeaTable
stand-in as the chaos script does, with one change for hosts that lose their network: it retries its SeaTable
calls until they succeed (or the time limit ends it), and its execution mark carries a nonce drawn once per
execution, so a retried append that did arrive is still one execution. The tally counts distinct nonces.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tests.chaos.load import HEADER, TABLE, Load, Row, Run, _gist
from tests.cluster.harness import Cluster
from tests.seatable_stub.button import RunScriptButton

SCRIPT_NAME = "count.py"

SCRIPT = '''\
import time
import uuid
from seatable_api import Base, context


def retry(call):
    """This host's network may be cut off for a while: wait for it, the time limit ends the run if it never comes."""
    while True:
        try:
            return call()
        except Exception as exc:
            print("retrying after", type(exc).__name__, flush=True)
            time.sleep(1)


row = context.current_row
nonce = uuid.uuid4().hex
base = Base(context.api_token, context.server_url)
retry(base.auth)
mark = retry(lambda: base.append_row("Executions", {"key": row["key"], "nonce": nonce}))
time.sleep(float(row["sleep"]))
print("chaos", row["key"], "ok")
retry(lambda: base.update_row("Executions", mark["_id"], {"done": "yes"}))
'''


@dataclass
class ClusterRow(Row):
    """The chaos suite's row plus the runs that ended as "sandbox lost": none of the cluster's faults loses a run
    for real (a host that comes back delivers, a killed process's runs are settled by the others)."""

    sandbox_lost: int = 0
    met: int = 0  # runs handed to a sandbox and not finished when the fault struck

    def count_finished(self, run: Run, output: str) -> None:
        super().count_finished(run, output)
        if "sandbox lost" in output.lower():
            self.sandbox_lost += 1
            self.notes.append(f"run {run.script_id} ended as sandbox lost: {_gist(output)}")

    @property
    def ok(self) -> bool:
        return super().ok and self.sandbox_lost == 0

    def cells(self) -> list[str]:
        cells = super().cells()
        return [cells[0], cells[1], str(self.met), *cells[2:-1], str(self.sandbox_lost), cells[-1]]


CLUSTER_HEADER = [HEADER[0], HEADER[1], "in flight at the fault", *HEADER[2:-1], "sandbox lost", HEADER[-1]]


def markdown(rows: list[ClusterRow]) -> str:
    lines = ["| " + " | ".join(CLUSTER_HEADER) + " |", "|" + "---|" * len(CLUSTER_HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


class ClusterLoad(Load):
    """One fault's runs on the cluster: a base of their own, submitted through the APIs in turn, then tallied."""

    chaos: Cluster  # narrows Load.chaos: submit also uses the cluster's APIs

    def prepare(self, big_emoji: int = 0) -> None:
        assert self.chaos.stub is not None
        seatable = self.chaos.stub.seatable
        self.base = seatable.add_base(name=f"cluster {self.fault}", tables=(TABLE,)).uuid
        seatable.add_script(self.base, SCRIPT_NAME, SCRIPT)

    def submit(self, count: int, big_every: int = 0, sleep: float = 1.0) -> None:
        apis = [self.chaos.api_url(i) for i in range(len(self.chaos.apis))]

        def one(i: int) -> Run:
            key = f"{self.org_id}-{i}"
            # A fresh connection per run: a POST /run-script/ must never be sent twice on a reset.
            button = RunScriptButton(apis[i % len(apis)], self.chaos.secret, request_timeout=60)
            script_id = button.submit(self.base, SCRIPT_NAME, owner=f"user{i % 4}@cluster.local",
                                      org_id=self.org_id, context_data={"table": TABLE,
                                                                        "row": {"key": key, "sleep": sleep}})
            return Run(script_id, key, SCRIPT_NAME)

        with ThreadPoolExecutor(max_workers=8) as pool:
            self.runs = list(pool.map(one, range(count)))

    def executions(self) -> tuple[Counter[str], set[str]]:
        """Distinct executions per key (by nonce: a retried append is one execution), and the keys whose
        execution reached its end."""
        assert self.chaos.stub is not None
        rows: list[dict[str, Any]] = [dict(r) for r in self.chaos.stub.seatable.rows(self.base, TABLE)]
        nonces: dict[str, set[str]] = defaultdict(set)
        for r in rows:
            nonces[str(r.get("key"))].add(str(r.get("nonce")))
        completed = {str(r.get("key")) for r in rows if r.get("done") == "yes"}
        return Counter({key: len(found) for key, found in nonces.items()}), completed

    def new_row(self, left: int, seconds: float) -> ClusterRow:
        return ClusterRow(self.fault, submitted=len(self.runs), left=left, seconds=seconds)

    def tally(self, left: int, seconds: float) -> ClusterRow:
        row = super().tally(left, seconds)
        assert isinstance(row, ClusterRow)
        return row
