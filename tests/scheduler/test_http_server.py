"""The real `seatable-scheduler serve` (gunicorn) over HTTP, on both backends."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import requests

from scheduler import texts
from scheduler.config import Config
from scheduler.db import Store, open_store
from tests.scheduler.conftest import AUTH, BASE, RunningServer, hand_off


def store_of(env: dict[str, str]) -> Store:
    """The served database, opened here to hand runs off as the dispatcher would."""
    return open_store(Config.from_env(env))

RUNS = 200
DUPLICATES = 50


def post(server: RunningServer, path: str, body: object, headers: dict[str, str] = AUTH) -> requests.Response:
    return requests.post(server.url + path, json=body, headers=headers, timeout=60)


def test_run_lifecycle_over_http(
    make_env: Callable[..., dict[str, str]], serve: Callable[[dict[str, str]], RunningServer]
) -> None:
    env = make_env()
    server = serve(env)
    assert requests.get(server.url + "/ping/", timeout=5).text == "Pong"
    created = post(server, "/run-script/", {"dtable_uuid": BASE, "script_name": "a.py", "owner": "o@x"})
    assert created.status_code == 200 and created.headers["Content-Type"].startswith("application/json")
    run_id = created.json()["script_id"]
    params = {"dtable_uuid": BASE, "script_name": "a.py"}
    pending = requests.get(f"{server.url}/run-script/{run_id}/", params=params, headers=AUTH, timeout=5)
    assert pending.json()["script"]["state"] == "pending"
    store = store_of(env)
    secret = {"Authorization": f"Token {hand_off(store, run_id)}"}
    store.disconnect()
    running = {"script_id": run_id, "started_at": time.time() - 1}
    assert post(server, "/script-running-callback/", running, headers=secret).json() == {"success": True}
    for wrong in ({}, AUTH):  # SeaTable's token is not a callback credential
        unauthenticated = post(server, "/script-result/", {"script_id": run_id}, headers=wrong)
        assert (unauthenticated.status_code, unauthenticated.json()["refused"]) == (403, "secret")
    assert post(server, "/script-result/", {"script_id": run_id, "success": True, "spend_time": 1}, secret).ok
    done = requests.get(f"{server.url}/run-script/{run_id}/", params=params, headers=AUTH, timeout=5).json()
    assert done["script"]["state"] == "finished" and done["script"]["success"] is True
    runs = requests.get(server.url + "/admin/runs/", headers=AUTH, timeout=5)
    assert runs.status_code == 200 and runs.json()["total_count"] == 1
    huge = requests.post(
        server.url + "/run-script/", data=b"{" + b" " * (9 * 1024 * 1024) + b"}", headers=AUTH, timeout=30
    )
    assert (huge.status_code, huge.text) == (413, texts.BODY_TOO_LARGE)
    assert "Traceback" not in server.log()


def test_concurrent_results_are_counted_exactly(
    make_env: Callable[..., dict[str, str]], serve: Callable[[dict[str, str]], RunningServer]
) -> None:
    """200 results for one base on one day, sent at once with 50 duplicates among them: exactly 200."""
    env = make_env(PYTHON_SCHEDULER_WORKERS="4", PYTHON_SCHEDULER_THREADS="16")
    server = serve(env)
    body = {"dtable_uuid": BASE, "script_name": "a.py", "owner": "alice@auth.local", "org_id": 3}
    with ThreadPoolExecutor(32) as pool:
        ids = list(pool.map(lambda _: post(server, "/run-script/", body).json()["script_id"], range(RUNS)))
    assert len(set(ids)) == RUNS
    store = store_of(env)
    secrets = {run_id: {"Authorization": f"Token {hand_off(store, run_id)}"} for run_id in ids}
    store.disconnect()
    targets = ids + ids[:DUPLICATES]
    barrier = threading.Barrier(len(targets))

    def send(run_id: int) -> int:
        barrier.wait()
        result = {"script_id": run_id, "success": True, "return_code": 0, "output": "x", "spend_time": 0.5}
        return post(server, "/script-result/", result, secrets[run_id]).status_code

    with ThreadPoolExecutor(len(targets)) as pool:
        statuses = list(pool.map(send, targets))
    assert Counter(statuses) == {200: RUNS, 409: DUPLICATES}  # a replay is refused, never counted
    for path, key, value in (
        ("/admin/statistics/scripts-running/by-base/", "base_uuid", BASE),
        ("/admin/statistics/scripts-running/by-user/", "username", "alice@auth.local"),
        ("/admin/statistics/scripts-running/by-org/", "org_id", 3),
    ):
        results = requests.get(server.url + path, headers=AUTH, timeout=10).json()["results"]
        assert len(results) == 1 and results[0][key] == value, (path, results)
        assert results[0]["total_run_count"] == RUNS, (path, results)
        assert results[0]["total_run_time"] == RUNS // 2
    assert requests.get(server.url + "/scripts-running-count/", params={"org_id": 3}, headers=AUTH,
                        timeout=10).json() == {"count": RUNS}  # fmt: skip
    by_base = requests.get(server.url + "/admin/statistics/by-base/", params={"org_id": 3}, headers=AUTH, timeout=10)
    assert by_base.json()["results"][0]["successful_runs"] == RUNS
