"""The run's state machine: the transition table, its SQL guards, and that lifecycle.py alone writes the runs.

The guards are run against rows in every stage in an in-memory SQLite table, so the table (what the code
says may happen) and the predicates (what the UPDATEs let happen) cannot drift apart.
"""

from __future__ import annotations

import ast
import re
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from scheduler import lifecycle
from scheduler.lifecycle import Stage, Transition

REPO = Path(__file__).resolve().parents[2]
SCHEDULER = REPO / "scheduler"
NOW = datetime(2026, 1, 1, 12, 0, 0)
PAST, FUTURE = NOW - timedelta(minutes=5), NOW + timedelta(minutes=5)
ME, NODE = "d1", "http://node-a:8088"

# Rows in every stage, in the forms they take (the claimer is always ME, the node NODE, where it matters).
ROWS: list[tuple[Stage, dict[str, object]]] = [
    (Stage.PENDING, {"state": "pending"}),
    (Stage.PENDING, {"state": None}),  # written by another tool
    (Stage.PENDING, {"state": "pending", "claimed_by": "d2", "lease_until": PAST}),  # a claim that ran out
    (Stage.PENDING, {"state": "pending", "claimed_by": ME, "lease_until": PAST}),  # ours, ran out
    (Stage.PENDING, {"state": "pending", "lease_until": FUTURE}),  # released with a delay
    (Stage.CLAIMED, {"state": "pending", "claimed_by": ME, "lease_until": FUTURE}),
    (Stage.CLAIMED, {"state": "pending", "claimed_by": "d2", "lease_until": FUTURE}),  # someone else's
    (Stage.HANDING_OFF, {"state": "pending", "claimed_by": ME, "lease_until": FUTURE, "dispatched_at": PAST,
                               "sandbox_node": NODE}),
    (Stage.HANDING_OFF, {"state": "pending", "claimed_by": ME, "lease_until": PAST, "dispatched_at": PAST,
                                "sandbox_node": "http://node-b:8088"}),
    (Stage.RUNNING, {"state": "running", "claimed_by": ME, "lease_until": FUTURE, "dispatched_at": PAST,
                           "sandbox_node": NODE, "started_at": PAST}),
    (Stage.RUNNING, {"state": "running", "started_at": PAST}),  # reported by a starter we never used
    (Stage.FINISHED, {"state": "finished", "claimed_by": ME, "lease_until": PAST, "dispatched_at": PAST,
                            "sandbox_node": NODE, "started_at": PAST}),
    (Stage.FINISHED, {"state": "finished"}),
]
COLUMNS = ("state", "claimed_by", "lease_until", "dispatched_at", "sandbox_node", "started_at", "created_at")


def guard_admits(transition: Transition, row: dict[str, object]) -> bool:
    """Whether the transition's UPDATE predicate selects `row` (SQLite; `$name` parameters as `:name`)."""
    db = sqlite3.connect(":memory:")
    db.execute(f"CREATE TABLE script_log (id INTEGER PRIMARY KEY, {', '.join(COLUMNS)})")
    values = {c: row.get(c, PAST if c == "created_at" else None) for c in COLUMNS}
    values = {c: v.isoformat(" ") if isinstance(v, datetime) else v for c, v in values.items()}
    db.execute(f"INSERT INTO script_log (id, {', '.join(COLUMNS)}) VALUES (1, {', '.join('?' * len(COLUMNS))})",
               tuple(values.values()))
    guard = re.sub(r"\$(\w+)", r":\1", transition.guard)
    params = {"me": ME, "node": NODE, "now": NOW.isoformat(" ")}
    return bool(db.execute(f"SELECT COUNT(*) FROM script_log WHERE {guard}", params).fetchone()[0])


def stage(row: dict[str, object]) -> Stage:
    def at(name: str) -> datetime | None:
        value = row.get(name)
        return value if isinstance(value, datetime) else None

    state = row.get("state")
    claimed_by = row.get("claimed_by")
    return lifecycle.stage_of(state if isinstance(state, str) else None, claimed_by if isinstance(claimed_by, str)
                              else None, at("lease_until"), at("dispatched_at"), NOW)


@pytest.mark.parametrize(("expected", "row"), ROWS)
def test_the_columns_put_each_row_in_its_stage(expected: Stage, row: dict[str, object]) -> None:
    assert stage(row) is expected


@pytest.mark.parametrize("transition", lifecycle.TRANSITIONS, ids=lambda t: t.name)
def test_a_guard_admits_no_row_from_a_stage_the_table_forbids(transition: Transition) -> None:
    for expected, row in ROWS:
        if guard_admits(transition, row):
            assert transition.allows(expected), f"{transition.name}'s guard admits a {expected.value} row {row}"


@pytest.mark.parametrize("transition", lifecycle.TRANSITIONS, ids=lambda t: t.name)
def test_a_guard_admits_some_row_of_every_stage_the_table_allows(transition: Transition) -> None:
    for source in transition.sources:
        assert any(guard_admits(transition, row) for expected, row in ROWS if expected is source), (
            f"{transition.name}'s guard admits no {source.value} row")


@pytest.mark.parametrize(("transition", "source"), [
    (lifecycle.CLAIM, Stage.CLAIMED),
    (lifecycle.CLAIM, Stage.HANDING_OFF),
    (lifecycle.HAND_OFF, Stage.PENDING),
    (lifecycle.HAND_OFF, Stage.FINISHED),
    (lifecycle.RELEASE, Stage.HANDING_OFF),  # a POST may be on its way: only the node's word may requeue it
    (lifecycle.REQUEUE, Stage.RUNNING),  # it started: never run twice
    (lifecycle.REQUEUE, Stage.FINISHED),
    (lifecycle.RENEW, Stage.PENDING),
    (lifecycle.START, Stage.FINISHED),
    (lifecycle.FINISH, Stage.FINISHED),
])  # fmt: skip
def test_illegal_transitions_are_refused(transition: Transition, source: Stage) -> None:
    assert not transition.allows(source)
    assert not any(guard_admits(transition, row) for stage, row in ROWS if stage is source)


def test_a_finished_run_has_no_way_out_and_every_other_stage_can_end() -> None:
    leaving_finished = [t.name for t in lifecycle.TRANSITIONS if t.allows(Stage.FINISHED)]
    assert leaving_finished == []
    for source in Stage:
        if source is not Stage.FINISHED:
            assert lifecycle.FINISH.allows(source)
            assert lifecycle.START.allows(source)  # DESIGN.md 7: callbacks for any run not yet finished


# --- ownership: lifecycle.py writes the runs, db.py alone knows Pony ---------------------------------------

_WRITES = re.compile(r"\b(UPDATE\s+script_log|INSERT\s+(?:OR\s+\w+\s+|IGNORE\s+)?INTO\s+script_log)\b", re.I)
_STAGE_COLUMNS = ("state", "claimed_by", "lease_until", "dispatched_at", "sandbox_node", "attempt", "started_at",
                  "finished_at", "outcome", "success", "return_code", "output")


def sql_writes(source: str) -> list[str]:
    """What in a module's source writes script_log: UPDATE/INSERT statements, `.insert("script_log", ...)`
    calls, and SET clauses naming the run's state or dispatch columns."""
    found = [m.group(0) for m in _WRITES.finditer(source)]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "insert":
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and first.value == "script_log":
                found.append('insert("script_log")')
    columns = "|".join(_STAGE_COLUMNS)
    found += [m.group(0) for m in re.finditer(rf"\bSET\s+(?:{columns})\s*=", source, re.I)]
    return found


def test_the_ownership_check_finds_writes() -> None:
    planted = '''
store.execute("UPDATE script_log SET output = NULL WHERE id = $i", {})
store.execute(f"UPDATE t SET state = 'finished' WHERE {x}")
store.insert("script_log", "id", state="pending")
cursor.execute("INSERT IGNORE INTO script_log (id) VALUES (1)")
'''
    assert len(sql_writes(planted)) == 5  # the first line twice: the UPDATE and its SET of `output`


def test_only_lifecycle_writes_script_log() -> None:
    writers = {path.relative_to(REPO).as_posix(): found for path in sorted(SCHEDULER.rglob("*.py"))
               if (found := sql_writes(path.read_text()))}
    # `migrate` adopting upstream's database fills created_at and marks pre-6.2.0 rows with a finish time
    # finished: a schema upgrade run once by the administrator, before any service starts.
    assert writers.pop("scheduler/schema.py") == ["UPDATE script_log", "UPDATE script_log", "SET state ="]
    assert set(writers) == {"scheduler/lifecycle.py"}, writers


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_pony_is_confined_to_the_database_module() -> None:
    users = sorted(path.relative_to(REPO).as_posix() for path in SCHEDULER.rglob("*.py")
                   if any(name == "pony" or name.startswith("pony.") for name in imports(path)))
    assert users == ["scheduler/db.py"]


def test_no_module_reaches_past_the_store_to_pony() -> None:
    """`store.db` is Pony's Database: only db.py (and tests) may touch it."""
    reaching = []
    for path in sorted(SCHEDULER.rglob("*.py")):
        if path.name == "db.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "db" and isinstance(node.value, (ast.Name,
                                                                                                 ast.Attribute)):
                reaching.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert reaching == []
