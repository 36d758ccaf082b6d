"""Dispatchers as real processes against a real database, SeaTable stand-in and stub sandbox nodes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pony.orm import db_session

from scheduler import texts
from scheduler.db import Store
from tests.dispatcher.conftest import (
    SCRIPT,
    SCRIPT_CONTENT,
    DispatcherProcess,
    SeaTableStub,
    enqueue,
    row,
    wait_for,
)
from tests.support.stub_sandbox import StubSandbox


def dispatch_env(db_env: dict[str, str], seatable: SeaTableStub, *nodes: StubSandbox, **extra: str) -> dict[str, str]:
    return {
        **db_env,
        "SEATABLE_SERVER_URL": seatable.url,
        "PYTHON_SANDBOX_URLS": ",".join(n.url for n in nodes),
        **extra,
    }


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"], indirect=True)
def test_three_dispatchers_hand_every_run_out_exactly_once(
    backend: str,
    db_env: dict[str, str],
    store: Store,
    seatable: SeaTableStub,
    node: StubSandbox,
    dispatchers: Callable[..., DispatcherProcess],
) -> None:
    total = 1000 if backend == "mariadb" else 300
    second = StubSandbox(node.token).start()  # two nodes: load spreads, and counts are per node
    try:
        env = dispatch_env(db_env, seatable, node, second)
        # One of them sweeps, as in production: a POST that timed out on a loaded machine is "uncertain", and
        # only the sweeper, asking the node, may put such a run back in the queue.
        procs = [dispatchers(env, "--maintain"), dispatchers(env), dispatchers(env)]
        ids = enqueue(store, seatable.base, total // 2)
        ids += enqueue(store, seatable.base, total - total // 2, owner="bob@auth.local", org_id=-1)

        def settled() -> bool:
            with db_session:
                undispatched = store.db.select(
                    "SELECT COUNT(*) FROM script_log WHERE dispatched_at IS NULL AND state <> 'finished'"
                )[0]
            return not undispatched and set(node.accepted + second.accepted) >= set(ids)

        wait_for(settled, 240, f"{total} runs handed off or ended")
        with db_session:
            ended = list(store.db.select("SELECT id, output FROM script_log WHERE state = 'finished'"))
        assert not ended, ended[:5]  # nothing failed on the way (e.g. a task/file fetch)
        for proc in procs:
            assert proc.terminate() == 0, proc.log()  # SIGTERM: graceful, exit 0
        counts = node.accepted + second.accepted
        assert sorted(counts) == sorted(ids)
        assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
        assert node.accepted and second.accepted, "one node got nothing: load did not spread"
        with db_session:
            undispatched = store.db.select("SELECT COUNT(*) FROM script_log WHERE dispatched_at IS NULL")[0]
        assert undispatched == 0
        # The bodies carry what the sandbox needs: the script (downloaded by the dispatcher from its one-time
        # URL) and the temp token from task/file.
        body: dict[str, Any] = node.bodies[next(iter(node.accepted))]
        assert body["script_content"] == SCRIPT_CONTENT and body["env"]["api_token"]
        assert body["env"]["dtable_web_url"] == seatable.url
    finally:
        second.stop()


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"], indirect=True)
def test_killed_between_claim_and_handoff_the_run_is_dispatched_again_once(
    backend: str,
    db_env: dict[str, str],
    store: Store,
    seatable: SeaTableStub,
    node: StubSandbox,
    dispatchers: Callable[..., DispatcherProcess],
) -> None:
    env = dispatch_env(db_env, seatable, node, PYTHON_DISPATCH_LEASE_SECS="2")
    [run_id] = enqueue(store, seatable.base, 1)
    first = dispatchers({**env, "PYTHON_DISPATCH_TEST_PAUSE": "after-claim:120"})
    assert first.wait_marker("after-claim") == [run_id]
    first.kill()
    claimed = row(store, run_id)
    assert claimed["claimed_by"] and claimed["dispatched_at"] is None and claimed["attempt"] == 1
    assert not node.accepted
    dispatchers(env)
    wait_for(lambda: node.accepted[run_id], 60, "the re-dispatch")
    wait_for(lambda: row(store, run_id)["dispatched_at"] is not None, 10, "the hand-off mark")
    assert node.accepted[run_id] == 1
    assert row(store, run_id)["attempt"] == 2


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"], indirect=True)
def test_fair_share_a_lone_run_of_team_b_goes_before_a_11th_run_of_team_a(
    backend: str,
    db_env: dict[str, str],
    store: Store,
    seatable: SeaTableStub,
    dispatchers: Callable[..., DispatcherProcess],
) -> None:
    # Four slots and no reports: the node fills after one small batch; B must be in it.
    with StubSandbox("stub-sandbox-token", slots=4) as node:
        team_a = enqueue(store, seatable.base, 200, owner="a@auth.local", org_id=11)
        [team_b] = enqueue(store, seatable.base, 1, owner="b@auth.local", org_id=-1)
        dispatchers(dispatch_env(db_env, seatable, node))
        wait_for(lambda: team_b in node.accepted, 60, "team B's run")
    a_before_b = [sid for sid in node.order[: node.order.index(team_b)] if sid in team_a]
    assert len(a_before_b) < 11, node.order[:20]
    # FIFO inside a team: only A's oldest runs went first (a batch's POSTs arrive in any order).
    assert set(a_before_b) <= set(team_a[:10])


def test_seatable_down_runs_end_with_a_clear_text_and_the_dispatcher_keeps_working(
    db_env: dict[str, str],
    store: Store,
    seatable: SeaTableStub,
    node: StubSandbox,
    dispatchers: Callable[..., DispatcherProcess],
) -> None:
    proc = dispatchers(dispatch_env(db_env, seatable, node))
    seatable.server.stop()
    down = enqueue(store, seatable.base, 3)
    for run_id in down:

        def finished(run_id: int = run_id) -> bool:
            return row(store, run_id)["state"] == "finished"

        wait_for(finished, 60, f"run {run_id} to end")
        ended = row(store, run_id)
        assert ended["success"] in (False, 0)
        assert ended["output"] == texts.SCRIPT_FETCH_FAILED.format(reason="SeaTable did not answer")
    missing = enqueue(store, seatable.base, 1, script_name="missing.py")
    seatable.server.start()
    [later] = enqueue(store, seatable.base, 1)
    wait_for(lambda: node.accepted[later], 60, "a run after SeaTable came back")
    wait_for(lambda: row(store, missing[0])["state"] == "finished", 30, "the missing script's run to end")
    assert row(store, missing[0])["output"] == texts.SCRIPT_NOT_FOUND.format(script_name="missing.py")
    assert proc.process.poll() is None
    assert not any(node.accepted[r] for r in down)
    assert SCRIPT  # the stub serves hello.py only
