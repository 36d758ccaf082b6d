"""The load: scripts that count their own executions in the SeaTable stand-in, and the tally of one fault.

Every run gets a key in its row. Its script appends a row with that key to the base's `Executions` table
(one row per execution), prints `chaos <key> ok` and then marks its row done: a row without the mark is an
execution that did not reach its end. The tally compares those rows with what the scheduler says.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from tests.seatable_stub import StubServer
from tests.seatable_stub.button import RunScriptButton

TABLE = "Executions"
COUNTING = "count.py"
BIG = "big.py"

_SCRIPT = '''\
import time
from seatable_api import Base, context

row = context.current_row
base = Base(context.api_token, context.server_url)
base.auth()
mark = base.append_row("Executions", {{"key": row["key"]}})
time.sleep(float(row["sleep"]))
print("chaos", row["key"], "ok")
{extra}base.update_row("Executions", mark["_id"], {{"done": "yes"}})
'''

# Texts that tell a user what happened to a run that has no output of its own (scheduler and sandbox wording).
CLEAR_FAILURES = ("sandbox lost", "time limit", "out of memory", "output limit", "fail to get script",
                  "sandbox error", "not started", "killed by signal", "invalid fields", "cpu time", "refused")


def counting_script() -> str:
    return _SCRIPT.format(extra="")


def big_output_script(emoji: int) -> str:
    """Prints `emoji` four-byte characters after its marker: a result body far over the scheduler's limit."""
    return _SCRIPT.format(extra=f'print("\\U0001F600" * {emoji})\n')


@dataclass(frozen=True)
class Run:
    script_id: int
    key: str
    script: str


@dataclass
class Row:
    fault: str
    submitted: int = 0
    executed: Counter[str] = field(default_factory=Counter)  # "0", "1", "2+"
    finished: int = 0
    own_output: int = 0
    clear_failure: int = 0
    unclear: int = 0
    stuck: int = 0
    lost: int = 0
    left: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def count_finished(self, run: Run, output: str) -> None:
        self.finished += 1

    @property
    def doubled(self) -> int:
        return self.executed["2+"]

    @property
    def ok(self) -> bool:
        return (self.doubled == 0 and self.stuck == 0 and self.lost == 0 and self.left == 0 and self.unclear == 0
                and self.finished == self.submitted)

    def cells(self) -> list[str]:
        return [self.fault, str(self.submitted), str(self.executed["0"]), str(self.executed["1"]),
                str(self.executed["2+"]), str(self.finished), f"{self.own_output}/{self.clear_failure}",
                str(self.stuck), str(self.lost), str(self.left), f"{self.seconds:.0f}", "yes" if self.ok else "NO"]


HEADER = ["fault", "runs", "ran 0", "ran 1", "ran 2+", "finished", "own output / clear failure", "stuck",
          "results lost", "containers left", "s", "target met"]


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


class Harness(Protocol):
    """What a Load uses of what it runs on: the chaos suite's Chaos, or a Cluster (tests/cluster/load.py)."""

    @property
    def secret(self) -> str: ...

    @property
    def stub(self) -> StubServer | None: ...

    @property
    def scheduler_url(self) -> str: ...

    def try_query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]] | None: ...


def _count(rows: list[tuple[object, ...]]) -> int:
    """The value of a COUNT(*) query's one row (pymysql gives an int)."""
    count = rows[0][0]
    assert isinstance(count, int)
    return count


@dataclass
class Load:
    """One fault's runs: a base of their own, submitted like SeaTable's button does, then tallied."""

    chaos: Harness
    fault: str
    org_id: int
    base: str = ""
    runs: list[Run] = field(default_factory=list)

    def prepare(self, big_emoji: int) -> None:
        assert self.chaos.stub is not None
        seatable = self.chaos.stub.seatable
        self.base = seatable.add_base(name=f"chaos {self.fault}", tables=(TABLE,)).uuid
        seatable.add_script(self.base, COUNTING, counting_script())
        seatable.add_script(self.base, BIG, big_output_script(big_emoji))

    def submit(self, count: int, big_every: int = 0, sleep: float = 1.0) -> None:
        button = RunScriptButton(self.chaos.scheduler_url, self.chaos.secret, request_timeout=60)

        def one(i: int) -> Run:
            key = f"{self.org_id}-{i}"
            script = BIG if big_every and i % big_every == 0 else COUNTING
            script_id = button.submit(self.base, script, owner=f"user{i % 4}@chaos.local", org_id=self.org_id,
                                      context_data={"table": TABLE, "row": {"key": key, "sleep": sleep}})
            return Run(script_id, key, script)

        with ThreadPoolExecutor(max_workers=4) as pool:
            self.runs = list(pool.map(one, range(count)))

    def _ids(self) -> str:
        return ",".join(str(r.script_id) for r in self.runs)

    def under_way(self) -> int:
        """Runs handed to the sandbox or further along (None while the database is away)."""
        rows = self.chaos.try_query(
            f"SELECT COUNT(*) FROM script_log WHERE id IN ({self._ids()}) "
            "AND (dispatched_at IS NOT NULL OR state <> 'pending')"
        )
        return _count(rows) if rows else 0

    def unfinished(self) -> int | None:
        rows = self.chaos.try_query(
            f"SELECT COUNT(*) FROM script_log WHERE id IN ({self._ids()}) AND state <> 'finished'"
        )
        return _count(rows) if rows else None

    def wait_under_way(self, share: float, timeout: float) -> None:
        """Until `share` of the runs are under way, so the fault meets runs in every phase."""
        deadline = time.monotonic() + timeout
        while self.under_way() < max(1, int(len(self.runs) * share)) and time.monotonic() < deadline:
            time.sleep(0.2)

    def wait_finished(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.unfinished() != 0 and time.monotonic() < deadline:
            time.sleep(1.0)

    def executions(self) -> tuple[Counter[str], set[str]]:
        """Executions per key (one `Executions` row each), and the keys whose execution reached its end."""
        assert self.chaos.stub is not None
        rows: list[dict[str, Any]] = [dict(r) for r in self.chaos.stub.seatable.rows(self.base, TABLE)]
        completed = {str(r.get("key")) for r in rows if r.get("done") == "yes"}
        return Counter(str(r.get("key")) for r in rows), completed

    def new_row(self, left: int, seconds: float) -> Row:
        return Row(self.fault, submitted=len(self.runs), left=left, seconds=seconds)

    def tally(self, left: int, seconds: float) -> Row:
        """Each run's executions as its script counted them, against what the scheduler says of it."""
        executions, completed = self.executions()
        button = RunScriptButton(self.chaos.scheduler_url, self.chaos.secret, request_timeout=60)
        row = self.new_row(left, seconds)
        for run in self.runs:
            n = executions[run.key]
            row.executed["0" if n == 0 else "1" if n == 1 else "2+"] += 1
            if n > 1:
                row.notes.append(f"run {run.script_id} executed {n} times")
            script = button.status(run.script_id, self.base, run.script)
            output = str(script.get("output") or "")
            if script.get("state") != "finished":
                row.stuck += 1
                row.notes.append(f"run {run.script_id} stuck: {script.get('state')}")
                continue
            row.count_finished(run, output)
            if f"chaos {run.key} ok" in output:
                row.own_output += 1
                continue
            if run.key in completed:
                row.lost += 1
                row.notes.append(f"run {run.script_id} ran to its end, result lost: {_gist(output)}")
            if script.get("success") is False and any(text in output.lower() for text in CLEAR_FAILURES):
                row.clear_failure += 1
            else:
                row.unclear += 1
                row.notes.append(f"run {run.script_id} unclear outcome (rc {script.get('return_code')}): "
                                 f"{_gist(output)}")
        return row


def _gist(output: str) -> str:
    """First and last line of an output: a traceback's last line says what happened."""
    lines = output.strip().splitlines() or [""]
    if len(lines) == 1:
        return repr(lines[0][:200])
    return f"{lines[0][:100]!r} ... {lines[-1][:200]!r}"
