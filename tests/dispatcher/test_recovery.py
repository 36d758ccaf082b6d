"""At-most-once and "every run ends": dispatcher crashes, lost nodes, forgetful nodes (the sweeper)."""

from __future__ import annotations

from collections.abc import Callable
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
from tests.dispatcher.conftest import (
    SANDBOX_TOKEN,
    DispatcherProcess,
    SeaTableStub,
    enqueue,
    row,
    wait_for,
)
from tests.dispatcher.test_dispatch import dispatch_env
from tests.scheduler.conftest import RunningServer
from tests.support.stub_sandbox import StubSandbox

pytestmark = pytest.mark.parametrize(
    "backend", ["sqlite", "mariadb"], indirect=True
)
FAST = {
    "PYTHON_PROCESS_TIMEOUT": "2",
    "PYTHON_SANDBOX_LOST_GRACE_SECS": "1",
    "PYTHON_SANDBOX_UNREACHABLE_SECS": "1",  # these nodes die for good: give up on them at once
    "PYTHON_DISPATCH_HANDOFF_SECS": "1",
    "PYTHON_SWEEP_INTERVAL_SECS": "1",
    "PYTHON_DISPATCH_LEASE_SECS": "2",
}


def test_killed_after_handoff_never_dispatched_again_and_the_result_arrives(
    backend: str,
    db_env: dict[str, str],
    store: Store,
    seatable: SeaTableStub,
    serve: Callable[[dict[str, str]], RunningServer],
    dispatchers: Callable[..., DispatcherProcess],
) -> None:
    server = serve({**db_env, "SEATABLE_SERVER_URL": seatable.url})
    with StubSandbox(SANDBOX_TOKEN, scheduler_url=server.url, run_seconds=2) as node:
        env = dispatch_env(db_env, seatable, node, **FAST)
        [run_id] = enqueue(store, seatable.base, 1)
        first = dispatchers({**env, "PYTHON_DISPATCH_TEST_PAUSE": "after-handoff:120"})
        assert first.wait_marker("after-handoff") == [run_id]
        first.kill()
        dispatchers(env, "--maintain")
        wait_for(lambda: row(store, run_id)["state"] == "finished", 60, "the sandbox's result")
        done = row(store, run_id)
        assert done["output"] == f"stub ran {run_id}\n" and done["success"]
        assert node.accepted[run_id] == 1


def test_killed_after_handoff_to_a_node_that_dies_ends_as_sandbox_lost(
    backend: str,
    db_env: dict[str, str],
    store: Store,
    seatable: SeaTableStub,
    dispatchers: Callable[..., DispatcherProcess],
) -> None:
    node = StubSandbox(SANDBOX_TOKEN, report=False).start()
    try:
        env = dispatch_env(db_env, seatable, node, **FAST)
        [run_id] = enqueue(store, seatable.base, 1)
        first = dispatchers({**env, "PYTHON_DISPATCH_TEST_PAUSE": "after-handoff:120"})
        first.wait_marker("after-handoff")
        first.kill()
        second = dispatchers(env, "--maintain")
        # While the node vouches for the run the sweeper renews its deadline: it outlives the first one.
        first_deadline = lease(store, run_id)
        wait_for(lambda: lease(store, run_id) > first_deadline, 30, "a renewed deadline")
        wait_for(lambda: store.clock.now() > first_deadline + timedelta(seconds=1), 30, "the first deadline")
        before = row(store, run_id)
        assert before["state"] == "pending" and before["dispatched_at"] is not None
    finally:
        node.stop()  # the node dies with the run
    wait_for(lambda: row(store, run_id)["state"] == "finished", 60, "the sweeper to end the run")
    lost = row(store, run_id)
    assert lost["output"] == texts.SANDBOX_LOST and not lost["success"]
    assert node.accepted[run_id] == 1
    assert second.terminate() == 0


def _in_process(
    db_env: dict[str, str], seatable: SeaTableStub, node: StubSandbox, store: Store, **extra: str
) -> tuple[Dispatcher, Maintenance]:
    config = Config.from_env(dispatch_env(db_env, seatable, node, **FAST, **extra))
    dispatcher = Dispatcher(
        config,
        store,
        SeaTable(config.seatable_server_url, config.auth_token),
        Nodes(config.sandbox_urls, SANDBOX_TOKEN),
    )
    return dispatcher, Maintenance(config, store, Nodes(config.sandbox_urls, SANDBOX_TOKEN))


def lease(store: Store, run_id: int) -> datetime:
    with db_session:
        value = store.db.select("SELECT lease_until FROM script_log WHERE id = $i", {"i": run_id})[0]
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def test_node_forgets_a_run_that_never_started_it_goes_back_and_is_dispatched_once_more(
    backend: str, db_env: dict[str, str], store: Store, seatable: SeaTableStub, node: StubSandbox
) -> None:
    dispatcher, maintenance = _in_process(db_env, seatable, node, store)
    [run_id] = enqueue(store, seatable.base, 1)
    assert dispatcher.step()
    assert node.accepted[run_id] == 1
    # Within the hand-off window a "not here" proves nothing (the POST may be in flight): no change.
    node.forget_all()
    report = maintenance.sweep_handed_off()
    if report.asked:  # the run may be younger than the sweep's one-second freshness floor
        assert report.requeued == 0
    wait_for(lambda: maintenance.sweep_handed_off().requeued == 1, 10, "the requeue")
    back = row(store, run_id)
    assert back["state"] == "pending" and back["dispatched_at"] is None and back["sandbox_node"] is None
    assert dispatcher.step()
    assert node.accepted[run_id] == 2  # the first copy never ran anywhere: the node never had it
    assert row(store, run_id)["attempt"] == 2


def test_node_forgets_a_run_that_started_it_ends_as_sandbox_lost(
    backend: str, db_env: dict[str, str], store: Store, seatable: SeaTableStub, node: StubSandbox
) -> None:
    dispatcher, maintenance = _in_process(db_env, seatable, node, store)
    [run_id] = enqueue(store, seatable.base, 1)
    assert dispatcher.step()
    runs.mark_running(store, run_id)  # the running callback arrived: the script may have side effects
    node.forget_all()
    wait_for(lambda: maintenance.sweep_handed_off().lost == 1, 10, "the sweeper")
    ended = row(store, run_id)
    assert ended["state"] == "finished" and ended["output"] == texts.SANDBOX_LOST_NODE_FORGOT
    assert not dispatcher.step()
    assert node.accepted[run_id] == 1


def test_refused_and_busy_nodes_release_the_run_without_a_trace(
    backend: str, db_env: dict[str, str], store: Store, seatable: SeaTableStub, node: StubSandbox
) -> None:
    dead = StubSandbox(SANDBOX_TOKEN).start()
    dead.stop()  # connection refused: the POST provably never left
    node.busy = True
    dispatcher, _ = _in_process(db_env, seatable, node, store)
    dispatcher.nodes = Nodes((dead.url, node.url), SANDBOX_TOKEN)
    for n in dispatcher.nodes.nodes.values():
        n.free, n.ready = 5, True  # as if /ready had said so a moment ago
        n.check_at = 1e18
    [run_id] = enqueue(store, seatable.base, 1)
    dispatcher.dispatch(dispatcher.claims.claim(1))
    dispatcher.dispatch(dispatcher.claims.claim(1))
    released = row(store, run_id)
    assert released["state"] == "pending" and released["dispatched_at"] is None and released["claimed_by"] is None
    node.busy = False
    dispatcher.nodes = Nodes((node.url,), SANDBOX_TOKEN)
    wait_for(dispatcher.step, 10, "a hand-off")
    assert node.accepted[run_id] == 1


def test_sigterm_releases_claims_not_yet_handed_off(
    backend: str, db_env: dict[str, str], store: Store, seatable: SeaTableStub, node: StubSandbox
) -> None:
    dispatcher, _ = _in_process(db_env, seatable, node, store)
    ids = enqueue(store, seatable.base, 3)
    claimed = dispatcher.claims.claim(3)
    dispatcher.stop()  # SIGTERM arrives while the batch's scripts are being fetched
    report = dispatcher.dispatch(claimed)
    assert report.released == 3 and not node.accepted
    assert all(row(store, i)["claimed_by"] is None for i in ids)
    assert report.handed_off == 0


def test_done_for_a_run_without_a_stored_result_ends_it_as_sandbox_lost_saying_so(
    backend: str, db_env: dict[str, str], store: Store, seatable: SeaTableStub, node: StubSandbox
) -> None:
    dispatcher, maintenance = _in_process(db_env, seatable, node, store)
    [run_id] = enqueue(store, seatable.base, 1)
    assert dispatcher.step()
    runs.mark_running(store, run_id)
    node.set_state(run_id, "done")  # the node says its result was acknowledged; this scheduler has none
    wait_for(lambda: maintenance.sweep_handed_off().lost == 1, 10, "the sweeper")
    ended = row(store, run_id)
    assert ended["state"] == "finished" and ended["output"] == texts.SANDBOX_LOST_NOT_RECORDED
    assert not ended["success"] and node.accepted[run_id] == 1


def test_a_result_waiting_on_the_node_is_never_given_up_a_run_running_far_too_long_is(
    backend: str, db_env: dict[str, str], store: Store, seatable: SeaTableStub, node: StubSandbox
) -> None:
    """"reporting" (the scheduler was unreachable, or refused the token, for a long time) renews however old
    the hand-off; "running" past twice the deadline plus the hand-off window ends as "sandbox lost"."""
    dispatcher, maintenance = _in_process(db_env, seatable, node, store)
    reporting, running = enqueue(store, seatable.base, 2)
    assert dispatcher.step()
    node.set_state(reporting, "reporting")
    long_ago = store.clock.now() - timedelta(hours=1)  # far past the hard cap of 2 * (2 + 1) + 1 s
    store.write(
        lambda: store.db.execute(
            "UPDATE script_log SET dispatched_at = $t WHERE id IN ($a, $b)",
            {"t": long_ago, "a": reporting, "b": running},
        )
    )
    report = maintenance.sweep_handed_off()
    assert (report.renewed, report.lost) == (1, 1)
    assert row(store, reporting)["state"] == "pending" and lease(store, reporting) > store.clock.now()
    assert row(store, running)["output"] == texts.SANDBOX_LOST_NO_RESULT.format(seconds=7)
