"""What the sweep concludes from a node that does not answer at all: nothing, for PYTHON_SANDBOX_UNREACHABLE_SECS.

A sandbox host cut off from the network keeps running its runs and delivers their results when it is back, so a
silent node's runs are waited for past their deadline, renewed as soon as the node answers again, and ended as
"sandbox lost" only when the node stayed silent past the deadline plus the unreachable window. Silence never puts
a run back in the queue. The deadlines are moved in the database instead of waited for.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from pony.orm import db_session

from scheduler import runs, texts
from scheduler.config import Config
from scheduler.db import Store
from scheduler.dispatcher import Dispatcher
from scheduler.maintenance import Maintenance
from scheduler.nodes import Nodes
from scheduler.seatable import SeaTable
from tests.dispatcher.conftest import SANDBOX_TOKEN, SeaTableStub, enqueue, row
from tests.dispatcher.test_dispatch import dispatch_env
from tests.support.stub_sandbox import StubSandbox

pytestmark = pytest.mark.parametrize(
    "backend", ["sqlite", "mariadb"], indirect=True
)
WINDOW = 600  # PYTHON_SANDBOX_UNREACHABLE_SECS in these tests


def _set_deadline(store: Store, run_id: int, deadline: datetime) -> None:
    """As if the node had last vouched for the run (handed off then) one deadline (60 + 60 s) before `deadline`."""
    store.write(lambda: store.db.execute(
        "UPDATE script_log SET lease_until = $d, dispatched_at = $t WHERE id = $i",
        {"d": deadline, "t": deadline - timedelta(seconds=120), "i": run_id}))


def _deadline(store: Store, run_id: int) -> datetime:
    with db_session:
        value = store.db.select("SELECT lease_until FROM script_log WHERE id = $i", {"i": run_id})[0]
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _hand_off(
    db_env: dict[str, str], seatable: SeaTableStub, node: StubSandbox, store: Store
) -> tuple[int, Maintenance]:
    config = Config.from_env(dispatch_env(db_env, seatable, node, PYTHON_PROCESS_TIMEOUT="60",
                                          PYTHON_SANDBOX_LOST_GRACE_SECS="60", PYTHON_DISPATCH_HANDOFF_SECS="1",
                                          PYTHON_SANDBOX_UNREACHABLE_SECS=str(WINDOW)))
    dispatcher = Dispatcher(config, store, SeaTable(config.seatable_server_url, config.auth_token),
                            Nodes(config.sandbox_urls, SANDBOX_TOKEN))
    [run_id] = enqueue(store, seatable.base, 1)
    assert dispatcher.step() and node.accepted[run_id] == 1
    return run_id, Maintenance(config, store, Nodes(config.sandbox_urls, SANDBOX_TOKEN))


def test_a_silent_node_past_the_sweep_windows_is_waited_for_and_delivers(
    db_env: dict[str, str], store: Store, seatable: SeaTableStub
) -> None:
    node = StubSandbox(SANDBOX_TOKEN, report=False).start()
    try:
        run_id, maintenance = _hand_off(db_env, seatable, node, store)
        node.stop()  # cut off: connections fail, the node keeps its runs
        # Past every sweep window (hand-off window, time limit plus grace), well inside the unreachable one.
        _set_deadline(store, run_id, store.clock.now() - timedelta(seconds=WINDOW // 2))
        report = maintenance.sweep_handed_off()
        assert (report.asked, report.lost, report.requeued, report.renewed) == (1, 0, 0, 0)
        assert row(store, run_id)["state"] == "pending" and row(store, run_id)["dispatched_at"] is not None

        # Meanwhile the run ended on the node (its time limit is far shorter than the cut): its result waits.
        node.set_state(run_id, "reporting")
        node.start()  # back: its answer renews the deadline
        assert maintenance.sweep_handed_off().renewed == 1
        assert _deadline(store, run_id) > store.clock.now()
        result = runs.RunResult(success=True, return_code=0, output="delivered after the cut", spend_time=1.0)
        assert runs.record_result(store, run_id, result) is runs.Outcome.APPLIED
        assert row(store, run_id)["output"] == "delivered after the cut"
        assert node.accepted[run_id] == 1
    finally:
        node.stop()


def test_a_node_silent_past_the_unreachable_window_loses_its_runs_and_never_requeues_them(
    db_env: dict[str, str], store: Store, seatable: SeaTableStub
) -> None:
    node = StubSandbox(SANDBOX_TOKEN, report=False).start()
    try:
        run_id, maintenance = _hand_off(db_env, seatable, node, store)
    finally:
        node.stop()  # gone for good
    _set_deadline(store, run_id, store.clock.now() - timedelta(seconds=WINDOW - 30))
    assert maintenance.sweep_handed_off().lost == 0
    _set_deadline(store, run_id, store.clock.now() - timedelta(seconds=WINDOW + 1))
    report = maintenance.sweep_handed_off()
    assert (report.lost, report.requeued) == (1, 0)
    ended = row(store, run_id)
    assert ended["state"] == "finished" and ended["output"] == texts.SANDBOX_LOST and not ended["success"]
    assert node.accepted[run_id] == 1
