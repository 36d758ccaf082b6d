"""Fair share (pure planning) and upstream's rate limit with its one notification per team and window."""

from __future__ import annotations

from datetime import timedelta

import pytest

from scheduler import runs, texts
from scheduler.config import Config
from scheduler.db import Store
from scheduler.dispatcher import Dispatcher
from scheduler.fairshare import QueuedTeam, Team, Usage, plan, rate_limited, team_of
from scheduler.nodes import Nodes
from scheduler.seatable import SeaTable
from tests.dispatcher.conftest import SANDBOX_TOKEN, SeaTableStub, enqueue, row
from tests.dispatcher.test_dispatch import dispatch_env
from tests.support.stub_sandbox import StubSandbox

A, B, C = Team(11, None), Team(None, "b@auth.local"), Team(12, None)


def test_team_is_the_org_or_the_owner_of_a_personal_account() -> None:
    assert team_of(11, "x@auth.local") == A
    assert team_of(-1, "b@auth.local") == team_of(None, "b@auth.local") == team_of(0, "b@auth.local") == B
    assert team_of(-1, "5@seafile_group").is_group and not B.is_group


def test_plan_prefers_least_usage_then_fewest_runs_then_the_oldest_run() -> None:
    teams = [
        QueuedTeam(A, first_id=1, queued=200, usage=Usage(0.0, 0)),
        QueuedTeam(B, first_id=201, queued=1, usage=Usage(0.0, 0)),
    ]
    assert plan(teams, 3) == [(A, 2), (B, 1)]
    order = plan(teams, 1) + plan([QueuedTeam(A, 2, 199, Usage(0.0, 1)), teams[1]], 1)
    assert order == [(A, 1), (B, 1)]  # after one of A's runs, B's is next
    busy = [QueuedTeam(A, 1, 5, Usage(30.0, 2)), QueuedTeam(C, 9, 5, Usage(1.0, 9))]
    assert plan(busy, 2) == [(C, 2)]  # run time decides before run counts


def test_rate_limit_is_upstreams_share_of_window_times_slots() -> None:
    assert not rate_limited(Usage(9999.0, 1, finished_seconds=749.0), 300, 10, 0.25)
    assert rate_limited(Usage(750.0, 1, finished_seconds=750.0), 300, 10, 0.25)


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"], indirect=True)
def test_rate_limited_team_runs_end_with_upstreams_text_and_one_notification(
    backend: str, db_env: dict[str, str], store: Store, seatable: SeaTableStub, node: StubSandbox
) -> None:
    env = dispatch_env(
        db_env,
        seatable,
        node,
        # An hour's window (3.6 s of run time allowed): the test never straddles two notification windows.
        PYTHON_SCHEDULER_WINDOW_SECS="3600",
        PYTHON_STARTER_TOTAL_THREAD_COUNT="1",
        PYTHON_SCHEDULER_RATE_LIMIT_PERCENT="0.001",
    )
    config = Config.from_env(env)
    pair = [
        Dispatcher(config, store, SeaTable(seatable.url, config.auth_token), Nodes(config.sandbox_urls, SANDBOX_TOKEN))
        for _ in range(2)
    ]
    [heavy] = enqueue(store, seatable.base, 1, org_id=11)
    assert pair[0].step() and node.accepted[heavy] == 1
    started = store.clock.now() - timedelta(seconds=10)
    runs.record_result(store, heavy, runs.RunResult(True, 0, "ok", started_at=started, spend_time=10.0))
    over = enqueue(store, seatable.base, 4, org_id=11)
    [other] = enqueue(store, seatable.base, 1, owner="b@auth.local", org_id=-1)
    pair[0].dispatch(pair[0].claims.claim(2))
    pair[1].dispatch(pair[1].claims.claim(10))
    for run_id in over:
        ended = row(store, run_id)
        assert ended["state"] == "finished" and ended["output"] == texts.RATE_LIMITED and not ended["success"]
    assert node.accepted[other] == 1
    assert [(n.org_ids, n.owners) for n in seatable.server.seatable.notifications] == [((11,), ())]
