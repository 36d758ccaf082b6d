"""Task logs, monthly counts, admin statistics and /admin/runs/ through the Falcon app."""

from __future__ import annotations

from datetime import datetime

from falcon import testing

from scheduler import runs, texts
from scheduler.db import Store
from tests.scheduler.conftest import AUTH, BASE, BASE_HEX, OTHER_BASE, new_run


def run_at(
    client: testing.TestClient,
    store: Store,
    when: datetime,
    spend: float = 10,
    success: bool = True,
    **fields: object,
) -> int:
    """A finished run that started at local time `when` (stored directly: a callback may not claim a past start)."""
    run_id = new_run(client, **fields)
    result = runs.RunResult(success, 0, "ok", started_at=when, spend_time=spend)
    assert runs.record_result(store, run_id, result) is runs.Outcome.APPLIED
    return run_id


def get(client: testing.TestClient, path: str, **params: object) -> testing.Result:
    return client.simulate_get(path, params={k: str(v) for k, v in params.items()}, headers=AUTH)


def test_task_logs_pages_newest_first(client: testing.TestClient) -> None:
    ids = [new_run(client) for _ in range(5)]
    new_run(client, script_name="other.py")
    new_run(client, dtable_uuid=OTHER_BASE)
    first = get(client, f"/tasks/{BASE}/a.py/logs/", per_page=2).json
    assert first["count"] == 5
    assert [log["id"] for log in first["task_logs"]] == ids[::-1][:2]
    third = get(client, f"/tasks/{BASE}/a.py/logs/", page=3, per_page=2).json
    assert [log["id"] for log in third["task_logs"]] == [ids[0]]
    ascending = get(client, f"/tasks/{BASE}/a.py/logs/", org_by="id").json
    assert [log["id"] for log in ascending["task_logs"]] == ids
    default = get(client, f"/tasks/{BASE_HEX}/a.py/logs/").json  # the other spelling of the uuid
    assert default["count"] == 5 and len(default["task_logs"]) == 5
    assert default["task_logs"][0]["context_data"] is None


def test_task_logs_errors(client: testing.TestClient) -> None:
    bad_order = get(client, f"/tasks/{BASE}/a.py/logs/", org_by="script_name")
    assert (bad_order.status_code, bad_order.text) == (400, texts.ORDER_BY_INVALID)
    assert get(client, "/tasks/not-a-uuid/a.py/logs/").status_code == 400
    forbidden = client.simulate_get(f"/tasks/{BASE}/a.py/logs/")
    assert (forbidden.status_code, forbidden.text) == (403, texts.FORBIDDEN_SHORT)


def test_task_log_detail_and_404s(client: testing.TestClient) -> None:
    run_id = new_run(client)
    detail = get(client, f"/tasks/{BASE_HEX}/a.py/logs/{run_id}/")
    assert detail.status_code == 200 and detail.json["task_log"]["id"] == run_id
    for path in (
        f"/tasks/{BASE}/a.py/logs/987654/",  # upstream answered 500 here
        f"/tasks/{BASE}/a.py/logs/abc/",
        f"/tasks/{OTHER_BASE}/a.py/logs/{run_id}/",
        f"/tasks/{BASE}/b.py/logs/{run_id}/",
    ):
        result = get(client, path)
        assert (result.status_code, result.json) == (404, {"error_msg": texts.SCRIPT_LOG_NOT_FOUND}), path


def test_scripts_running_count(client: testing.TestClient, store: Store) -> None:
    now = store.clock.now()
    for _ in range(3):
        run_at(client, store, now, org_id=7, owner="alice@auth.local")
    run_at(client, store, now, org_id=-1, owner="bob@auth.local")
    new_run(client, org_id=7)  # pending runs are not counted yet
    month = now.strftime("%Y-%m")
    assert get(client, "/scripts-running-count/", org_id=7).json == {"count": 3}
    assert get(client, "/scripts-running-count/", org_id=7, month=month).json == {"count": 3}
    assert get(client, "/scripts-running-count/", org_id=7, month="2001-01").json == {"count": 0}
    assert get(client, "/scripts-running-count/", username="bob@auth.local").json == {"count": 1}
    assert get(client, "/scripts-running-count/", username="alice@auth.local").json == {"count": 3}
    for params, text in (
        ({}, texts.USERNAME_OR_ORG_INVALID),
        ({"org_id": -1}, texts.ORG_ID_INVALID),
        ({"org_id": "x"}, texts.ORG_ID_INVALID),
        ({"org_id": 7, "month": "2024-13"}, texts.MONTH_INVALID),
        ({"org_id": 7, "month": "May"}, texts.MONTH_INVALID),
    ):
        result = get(client, "/scripts-running-count/", **params)
        assert (result.status_code, result.text) == (400, text), params


def test_monthly_admin_statistics(client: testing.TestClient, store: Store) -> None:
    now = store.clock.now()
    run_at(client, store, now, spend=5, owner="a@x", org_id=1)
    run_at(client, store, now, spend=5, owner="a@x", org_id=1)
    run_at(client, store, now, spend=30, owner="b@x", org_id=2, dtable_uuid=OTHER_BASE)
    by_user = get(client, "/admin/statistics/scripts-running/by-user/", order_by="-total_run_count").json
    assert by_user == {
        "month": now.strftime("%Y-%m"),
        "count": 2,
        "results": [
            {"username": "a@x", "total_run_count": 2, "total_run_time": 10},
            {"username": "b@x", "total_run_count": 1, "total_run_time": 30},
        ],
    }
    by_org = get(client, "/admin/statistics/scripts-running/by-org/", order_by="total_run_time",
                 direction="desc").json  # fmt: skip
    assert [r["org_id"] for r in by_org["results"]] == [2, 1]
    by_base = get(client, "/admin/statistics/scripts-running/by-base/", order_by="total_run_time").json
    assert by_base["results"] == [
        {"base_uuid": BASE, "total_run_count": 2, "total_run_time": 10},
        {"base_uuid": OTHER_BASE, "total_run_count": 1, "total_run_time": 30},
    ]
    paged = get(client, "/admin/statistics/scripts-running/by-user/", per_page=1, page=2).json
    assert paged["count"] == 2 and [r["username"] for r in paged["results"]] == ["b@x"]
    assert get(client, "/admin/statistics/scripts-running/by-user/", month="1999-01").json["count"] == 0
    for params, text in (
        ({"order_by": "username"}, texts.ORDER_BY_INVALID),
        ({"month": "2024-1-1"}, texts.MONTH_INVALID),
    ):
        result = get(client, "/admin/statistics/scripts-running/by-org/", **params)
        assert (result.status_code, result.text) == (400, text), params


def test_admin_runs(client: testing.TestClient, store: Store) -> None:
    """Upstream answers 500 (DetachedInstanceError); here 200 with runs and total_count."""
    a = run_at(client, store, datetime(2025, 3, 1, 10, 0, 0), org_id=1)
    b = run_at(client, store, datetime(2025, 3, 2, 23, 59, 59), org_id=1, dtable_uuid=OTHER_BASE)
    c = run_at(client, store, datetime(2025, 3, 3, 0, 0, 0), org_id=2)
    everything = get(client, "/admin/runs/").json
    assert everything["total_count"] == 3
    assert [r["id"] for r in everything["runs"]] == [c, b, a]
    assert "output" not in everything["runs"][0] and "context_data" not in everything["runs"][0]
    assert [r["id"] for r in get(client, "/admin/runs/", org_id=1).json["runs"]] == [b, a]
    assert [r["id"] for r in get(client, "/admin/runs/", base_uuid=OTHER_BASE).json["runs"]] == [b]
    window = get(client, "/admin/runs/", start="2025-03-02", end="2025-03-02").json
    assert (window["total_count"], [r["id"] for r in window["runs"]]) == (1, [b])
    iso = get(client, "/admin/runs/", start="2025-03-01T10:00:00", end="2025-03-03T00:00:00").json
    assert iso["total_count"] == 3
    paged = get(client, "/admin/runs/", per_page=2, page=2).json
    assert (paged["total_count"], [r["id"] for r in paged["runs"]]) == (3, [a])
    for params, message in (
        ({"start": "yesterday"}, texts.START_INVALID),
        ({"end": "2025-02-30"}, texts.END_INVALID),
        ({"page": "one"}, texts.PAGE_NOT_INTEGER),
        ({"page": "0"}, texts.PAGE_NOT_POSITIVE),
        ({"per_page": "1001"}, texts.PER_PAGE_TOO_LARGE),
        ({"per_page": "x"}, texts.PER_PAGE_NOT_INTEGER),
        ({"org_id": "1 OR 1=1"}, texts.ORG_ID_PARAM_INVALID),
        ({"base_uuid": "' OR ''='"}, texts.BASE_UUID_INVALID),
    ):
        result = get(client, "/admin/runs/", **params)
        assert (result.status_code, result.json) == (400, {"error": message}), params


def test_admin_statistics_by_base_and_day(client: testing.TestClient, store: Store) -> None:
    run_at(client, store, datetime(2025, 3, 1, 10, 0, 0), spend=5, org_id=1, operate_from="manualy")
    run_at(client, store, datetime(2025, 3, 1, 11, 0, 0), spend=7, org_id=1, operate_from="automation-rule",
           success=False)  # fmt: skip
    run_at(client, store, datetime(2025, 3, 2, 9, 0, 0), spend=1, org_id=1, dtable_uuid=OTHER_BASE)
    run_at(client, store, datetime(2025, 3, 2, 9, 0, 0), spend=100, org_id=2)
    new_run(client, org_id=1)  # pending: counted as a run, without time or outcome
    by_base = get(client, "/admin/statistics/by-base/", org_id=1).json
    assert by_base == {
        "results": [
            {"base_uuid": BASE, "number_of_runs": 3, "total_run_time": 12, "triggered_manually": 2,
             "triggered_by_automation_rule": 1, "successful_runs": 1, "unsuccessful_runs": 1},
            {"base_uuid": OTHER_BASE, "number_of_runs": 1, "total_run_time": 1, "triggered_manually": 1,
             "triggered_by_automation_rule": 0, "successful_runs": 1, "unsuccessful_runs": 0},
        ],
        "total_count": 2,
    }  # fmt: skip
    by_day = get(client, "/admin/statistics/by-day/", org_id=1, start="2025-03-01", end="2025-03-02").json
    assert by_day == {
        "results": [
            {"date": "2025-03-01", "number_of_runs": 2, "total_run_time": 12, "triggered_manually": 1,
             "triggered_by_automation_rule": 1, "successful_runs": 1, "unsuccessful_runs": 1},
            {"date": "2025-03-02", "number_of_runs": 1, "total_run_time": 1, "triggered_manually": 1,
             "triggered_by_automation_rule": 0, "successful_runs": 1, "unsuccessful_runs": 0},
        ],
        "total_count": 2,
    }  # fmt: skip
    one_base = get(client, "/admin/statistics/by-day/", org_id=1, base_uuid=OTHER_BASE).json
    assert [r["date"] for r in one_base["results"]] == ["2025-03-02"]
    paged = get(client, "/admin/statistics/by-base/", org_id=1, per_page=1, page=2).json
    assert paged["total_count"] == 2 and [r["base_uuid"] for r in paged["results"]] == [OTHER_BASE]
    for path in ("/admin/statistics/by-base/", "/admin/statistics/by-day/"):
        result = get(client, path)
        assert (result.status_code, result.json) == (400, {"error": texts.ORG_ID_REQUIRED})
        result = get(client, path, org_id=1, start="01/03/2025")
        assert (result.status_code, result.json) == (400, {"error": texts.START_INVALID})
