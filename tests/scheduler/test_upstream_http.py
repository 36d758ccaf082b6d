"""What SeaTable's components meet over the wire, answered as upstream's Flask answers it (issue 15, item 9).

A real `seatable-scheduler serve` (gunicorn) on both backends: trailing-slash redirects and HEAD on every GET
route, the callbacks' JSON 404, and the lenient page/per_page/direction handling of the routes whose status
dtable-web does not check (a 400 there becomes a 500 page in SeaTable's admin area).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import requests

from scheduler import texts
from scheduler.config import Config
from scheduler.db import open_store
from tests.scheduler.conftest import AUTH, BASE, RunningServer

SCRIPT = {"dtable_uuid": BASE, "script_name": "a.py"}


def get(server: RunningServer, path: str, **params: Any) -> requests.Response:
    return requests.get(server.url + path, params=params, headers=AUTH, timeout=30)


def test_redirects_head_and_404s_as_flask(
    make_env: Callable[..., dict[str, str]], serve: Callable[[dict[str, str]], RunningServer]
) -> None:
    server = serve(make_env())
    ping = requests.get(server.url + "/ping", allow_redirects=False, timeout=10)
    assert (ping.status_code, ping.headers["Location"]) == (308, "/ping/")
    assert requests.get(server.url + "/ping", timeout=10).text == "Pong"  # what a client following it sees
    # 308 keeps method and body: a POST to the path without its slash still starts the run
    created = requests.post(server.url + "/run-script", json={**SCRIPT, "owner": "o@x"}, headers=AUTH, timeout=10)
    assert created.status_code == 200 and created.history[0].status_code == 308
    run_id = created.json()["script_id"]
    status = requests.get(f"{server.url}/run-script/{run_id}", params=SCRIPT, headers=AUTH, allow_redirects=False,
                          timeout=10)  # fmt: skip
    assert status.status_code == 308
    assert status.headers["Location"] == f"/run-script/{run_id}/?dtable_uuid={BASE}&script_name=a.py"

    get_routes: list[tuple[str, Mapping[str, str | int]]] = [
        ("/ping/", {}),
        (f"/run-script/{run_id}/", SCRIPT),
        (f"/tasks/{BASE}/a.py/logs/", {}),
        (f"/tasks/{BASE}/a.py/logs/{run_id}/", {}),
        ("/scripts-running-count/", {"org_id": 1}),
        *((f"/admin/statistics/scripts-running/by-{t}/", {}) for t in ("user", "org", "base")),
        ("/admin/runs/", {}),
        ("/admin/statistics/by-base/", {"org_id": 1}),
        ("/admin/statistics/by-day/", {"org_id": 1}),
        ("/admin/statistics/by-day/", {}),  # an error answer too: 400 with its JSON body
        (f"/tasks/{BASE}/a.py/logs/424242/", {}),  # and a 404
    ]
    for path, params in get_routes:
        full = requests.get(server.url + path, params=params, headers=AUTH, timeout=10)
        head = requests.head(server.url + path, params=params, headers=AUTH, timeout=10)
        assert head.status_code == full.status_code != 405, (path, head.status_code, full.status_code)
        assert head.content == b"" and full.content, path
        for header in ("Content-Type", "Content-Length"):
            assert head.headers.get(header) == full.headers.get(header), (path, header)

    for path in ("/nothing", "/nothing/", "/run-scripts/"):
        assert requests.get(server.url + path, allow_redirects=False, timeout=10).status_code == 404, path
    for path in ("/script-running-callback/", "/script-result/"):
        missing = requests.post(server.url + path, json={"script_id": 424242}, headers=AUTH, timeout=10)
        assert (missing.status_code, missing.json()) == (404, {"error_msg": "Script not found"}), path


def test_monthly_statistics_fall_back_instead_of_refusing(
    make_env: Callable[..., dict[str, str]], serve: Callable[[dict[str, str]], RunningServer]
) -> None:
    env = make_env()
    server = serve(env)
    store = open_store(Config.from_env(env))
    try:
        today = store.clock.now()

        def seed() -> None:
            for i in range(1003):  # three named users and 1000 more: enough to see the per_page cap
                name = ("a@x", "b@x", "c@x")[i] if i < 3 else f"u{i:04d}@x"
                store.db.insert("user_run_script_statistics", username=name, org_id=-1, run_date=today.date(),
                                total_run_count=(5, 1, 3)[i] if i < 3 else 2, total_run_time=1.0)  # fmt: skip

        store.write(seed)
    finally:
        store.disconnect()
    path = "/admin/statistics/scripts-running/by-user/"

    def users(**params: Any) -> tuple[int, list[str]]:
        answer = get(server, path, **params)
        assert answer.status_code == 200, (params, answer.status_code, answer.text)
        data = answer.json()
        assert data["month"] == today.strftime("%Y-%m")
        return data["count"], [r["username"] for r in data["results"]]

    first_page = users()
    assert first_page[0] == 1003 and len(first_page[1]) == 25 and first_page[1][:3] == ["a@x", "b@x", "c@x"]
    for odd in ({"page": "x"}, {"page": "0"}, {"page": "-1"}, {"page": "1.5"}, {"per_page": "x"},
                {"per_page": "0"}, {"per_page": "-5"}, {"page": "", "per_page": ""}):  # fmt: skip
        assert users(**odd) == first_page, odd
    assert users(per_page=2, page=2)[1] == ["c@x", "u0003@x"]
    assert users(page=9999) == (0, [])  # past the end: upstream counts only when the page has results
    capped = users(per_page=5000)
    assert capped[0] == 1003 and len(capped[1]) == 1000  # no bound upstream; cut here, not refused
    assert users(per_page=5000, page=2)[1] == [f"u{i:04d}@x" for i in range(1000, 1003)]

    def top(order_by: str = "total_run_count", **params: Any) -> list[str]:
        return users(order_by=order_by, per_page=3, **params)[1]

    assert top(direction="desc") == ["a@x", "c@x", "u0003@x"]
    assert top(order_by="-total_run_count") == ["a@x", "c@x", "u0003@x"]
    assert top(order_by="-total_run_count", direction="desc") == ["a@x", "c@x", "u0003@x"]  # a 500 upstream
    assert top(direction="sideways") == top() == top(direction="DESC") == ["b@x", "u0003@x", "u0004@x"]
    assert users(direction="desc", per_page=2)[1] == ["a@x", "b@x"]  # without order_by, direction is ignored
    # what upstream refuses stays refused, with upstream's words
    for params, text in (({"month": "2024-13"}, texts.MONTH_INVALID),
                         ({"order_by": "username"}, texts.ORDER_BY_INVALID)):  # fmt: skip
        refused = get(server, path, **params)
        assert (refused.status_code, refused.text) == (400, text), params


def test_task_logs_fall_back_instead_of_failing(
    make_env: Callable[..., dict[str, str]], serve: Callable[[dict[str, str]], RunningServer]
) -> None:
    env = make_env()
    server = serve(env)
    store = open_store(Config.from_env(env))
    try:
        now = store.clock.now()

        row = {"dtable_uuid": BASE, "owner": "o@x", "org_id": 1, "script_name": "a.py", "state": "pending",
               "created_at": now}  # fmt: skip

        def seed() -> list[int]:
            return [int(store.db.insert("script_log", returning="id", **row)) for _ in range(1005)]

        ids = store.write(seed)
    finally:
        store.disconnect()
    path = f"/tasks/{BASE}/a.py/logs/"

    def logs(**params: Any) -> list[int]:
        answer = get(server, path, **params)
        assert answer.status_code == 200, (params, answer.status_code, answer.text)
        assert answer.json()["count"] == 1005
        return [log["id"] for log in answer.json()["task_logs"]]

    newest = ids[::-1]
    assert logs() == newest[:20]
    for odd in ({"page": "x"}, {"page": "0"}, {"per_page": "x"}, {"per_page": "0"}, {"per_page": "-3"}):
        assert logs(**odd) == newest[:20], odd  # upstream: a 500 for a non-number
    assert logs(page=2, per_page=20) == newest[20:40]
    assert logs(per_page=5000) == newest[:1000]
    assert logs(per_page=5000, page=2) == newest[1000:]
    refused = get(server, path, org_by="name")
    assert (refused.status_code, refused.text) == (400, texts.ORDER_BY_INVALID)
