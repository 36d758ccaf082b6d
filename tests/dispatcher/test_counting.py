"""The monthly count (the quota) and the statistics count a run only when its sandbox reported a result.

As upstream: rate-limited runs, task-file failures, refusals, "sandbox lost" (also after the run started) and
queue time-outs end in script_log but are not counted. Each kind of end is produced the way it happens in
production (dispatcher and sweeper against a stub SeaTable and stub sandbox nodes), and the counts are read
through a real scheduler API process, as dtable-web reads them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import requests

from scheduler import texts
from scheduler.config import Config
from scheduler.db import Store
from scheduler.dispatcher import Dispatcher
from scheduler.maintenance import Maintenance
from scheduler.nodes import Nodes
from scheduler.seatable import SeaTable
from tests.dispatcher.conftest import SANDBOX_TOKEN, SeaTableStub, enqueue, row, wait_for
from tests.dispatcher.test_dispatch import dispatch_env
from tests.scheduler.conftest import AUTH, RunningServer, hand_off
from tests.support.stub_sandbox import StubSandbox

FAST = {
    "PYTHON_PROCESS_TIMEOUT": "2",
    "PYTHON_SANDBOX_LOST_GRACE_SECS": "1",
    "PYTHON_SANDBOX_UNREACHABLE_SECS": "1",  # these nodes die for good: give up on them at once
    "PYTHON_DISPATCH_HANDOFF_SECS": "1",
    "PYTHON_SCHEDULER_QUEUE_TIMEOUT": "120",
}
RATE_LIMITED = {  # 3.6 s of run time per team and hour: one 10 s run uses it up
    "PYTHON_SCHEDULER_WINDOW_SECS": "3600",
    "PYTHON_STARTER_TOTAL_THREAD_COUNT": "1",
    "PYTHON_SCHEDULER_RATE_LIMIT_PERCENT": "0.001",
}


class Api:
    """The scheduler's API as dtable-web calls it."""

    def __init__(self, server: RunningServer) -> None:
        self.url = server.url

    def get(self, path: str, **params: Any) -> Any:
        response = requests.get(self.url + path, params=params, headers=AUTH, timeout=10)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def post(self, path: str, body: dict[str, Any], secret: str) -> Any:
        """A callback with the run's own secret."""
        response = requests.post(self.url + path, json=body, headers={"Authorization": f"Token {secret}"}, timeout=10)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def count(self, org_id: int) -> int:
        return int(self.get("/scripts-running-count/", org_id=org_id)["count"])

    def user_count(self, username: str) -> int:
        return int(self.get("/scripts-running-count/", username=username)["count"])

    def monthly(self, target: str) -> dict[Any, int]:
        key = {"user": "username", "org": "org_id", "base": "base_uuid"}[target]
        page = self.get(f"/admin/statistics/scripts-running/by-{target}/", per_page=1000)
        return {r[key]: r["total_run_count"] for r in page["results"]}


def owner(org_id: int) -> str:
    return f"user{org_id}@auth.local"


def runs_of(store: Store, base: str, org_id: int, count: int = 1, script_name: str = "hello.py") -> list[int]:
    return enqueue(store, base, count, owner=owner(org_id), org_id=org_id, script_name=script_name)


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"], indirect=True)
def test_only_runs_with_a_sandbox_result_are_counted(
    backend: str,
    db_env: dict[str, str],
    store: Store,
    seatable: SeaTableStub,
    serve: Callable[[dict[str, str]], RunningServer],
) -> None:
    api = Api(serve({**db_env, "SEATABLE_SERVER_URL": seatable.url}))
    reporter = StubSandbox(SANDBOX_TOKEN, scheduler_url=api.url).start()
    holder = StubSandbox(SANDBOX_TOKEN, report=False).start()
    refuser = StubSandbox(SANDBOX_TOKEN, refuse=True).start()
    dying = StubSandbox(SANDBOX_TOKEN, report=False).start()
    nodes_started = [reporter, holder, refuser, dying]

    def dispatcher(node: StubSandbox, **extra: str) -> Dispatcher:
        config = Config.from_env(dispatch_env(db_env, seatable, node, **FAST, **extra))
        return Dispatcher(config, store, SeaTable(seatable.url, config.auth_token), Nodes((node.url,), SANDBOX_TOKEN))

    def maintenance(node: StubSandbox) -> Maintenance:
        config = Config.from_env(dispatch_env(db_env, seatable, node, **FAST))
        return Maintenance(config, store, Nodes((node.url,), SANDBOX_TOKEN))

    def ended(run_id: int, output: str) -> None:
        wait_for(lambda: row(store, run_id)["state"] == "finished", 30, f"run {run_id} to end")
        assert row(store, run_id)["output"] == output

    try:
        # Counted: the sandbox ran it and reported its result.
        [done] = runs_of(store, seatable.base, 10)
        assert dispatcher(reporter).step()
        ended(done, f"stub ran {done}\n")
        assert api.count(10) == 1 and api.user_count(owner(10)) == 1

        # Rate limited: a team whose earlier run (counted, reported with 10 s) used up its share.
        [heavy] = runs_of(store, seatable.base, 11)
        assert dispatcher(holder).step()
        api.post("/script-result/", {"script_id": heavy, "success": True, "return_code": 0, "output": "ok",
                                     "started_at": time.time() - 10, "spend_time": 10.0},
                 holder.bodies[heavy]["callback_secret"])  # fmt: skip
        over = runs_of(store, seatable.base, 11, count=2)
        assert dispatcher(reporter, **RATE_LIMITED).step()
        for run_id in over:
            ended(run_id, texts.RATE_LIMITED)
        assert api.count(11) == 1

        # Task-file failure: SeaTable has no such script.
        [missing] = runs_of(store, seatable.base, 12, script_name="missing.py")
        assert dispatcher(reporter).step()
        ended(missing, texts.SCRIPT_NOT_FOUND.format(script_name="missing.py"))

        # Refused by the sandbox.
        [refused] = runs_of(store, seatable.base, 13)
        assert dispatcher(refuser).step()
        ended(refused, texts.SANDBOX_REJECTED.format(reason="HTTP 400: refused by the stub"))

        # Sandbox lost before the run started: the node stops answering past the deadline.
        [unanswered] = runs_of(store, seatable.base, 14)
        assert dispatcher(dying).step() and dying.accepted[unanswered] == 1
        dying.stop()
        wait_for(lambda: maintenance(dying).sweep_handed_off().lost == 1, 30, "the sweep after the deadline")
        ended(unanswered, texts.SANDBOX_LOST)

        # Sandbox lost after the run started (the running callback arrived): upstream never counts it either.
        [forgotten] = runs_of(store, seatable.base, 15)
        assert dispatcher(holder).step()
        api.post("/script-running-callback/", {"script_id": forgotten, "started_at": time.time()},
                 holder.bodies[forgotten]["callback_secret"])
        assert api.get(f"/tasks/{seatable.base}/hello.py/logs/{forgotten}/")["task_log"]["state"] == "running"
        holder.forget_all()
        wait_for(lambda: maintenance(holder).sweep_handed_off().lost == 1, 30, "the sweep of a forgotten run")
        ended(forgotten, texts.SANDBOX_LOST_NODE_FORGOT)

        # Lost and reported so by the sandbox itself after its restart (`"lost": true` with its result).
        [restarted] = runs_of(store, seatable.base, 16)
        secret = hand_off(store, restarted)
        api.post("/script-running-callback/", {"script_id": restarted}, secret)
        api.post("/script-result/", {"script_id": restarted, "success": False, "return_code": None,
                                     "output": "sandbox lost: restarted", "spend_time": 0.0, "lost": True},
                 secret)  # fmt: skip
        ended(restarted, "sandbox lost: restarted")

        # Queued too long, and started by some other starter long ago without a result.
        [queued] = runs_of(store, seatable.base, 17)
        [elsewhere] = runs_of(store, seatable.base, 18)
        long_ago = store.clock.now() - timedelta(seconds=600)
        # A run an upstream starter marked running before this scheduler took over the database (no callback
        # can mark a run running that was never handed off).
        store.write(lambda: store.db.execute(
            "UPDATE script_log SET created_at = $t, started_at = $t, state = 'running' WHERE id = $i",
            {"t": long_ago, "i": elsewhere}))  # fmt: skip
        store.write(lambda: store.db.execute("UPDATE script_log SET created_at = $t WHERE id = $i",
                                             {"t": long_ago, "i": queued}))  # fmt: skip
        assert maintenance(holder).end_stale() == 2
        ended(queued, texts.QUEUE_TIMEOUT.format(seconds=120))
        ended(elsewhere, texts.SANDBOX_LOST_NO_RESULT.format(seconds=3))

        for org_id in range(12, 19):
            assert api.count(org_id) == 0, org_id
            assert api.user_count(owner(org_id)) == 0, org_id
        assert api.monthly("org") == {10: 1, 11: 1}
        assert api.monthly("user") == {owner(10): 1, owner(11): 1}
        assert api.monthly("base") == {seatable.base: 2}
        # script_log keeps every run: the script's logs in dtable-web show all ten runs of hello.py
        logs = api.get(f"/tasks/{seatable.base}/hello.py/logs/", per_page=100)
        assert logs["count"] == 10 and all(log["state"] == "finished" for log in logs["task_logs"])
    finally:
        for node in nodes_started:
            node.stop()
