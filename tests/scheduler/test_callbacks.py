"""The running and result callbacks: authenticated, idempotent, never double-counted."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from falcon import testing
from pony.orm import db_session

from scheduler import runs, texts
from scheduler.app import create_app
from scheduler.config import Config
from scheduler.db import Store
from tests.scheduler.conftest import AUTH, BASE, finish, new_run


def base_stats(store: Store) -> tuple[int, float]:
    with db_session:
        rows = store.db.select(
            "SELECT total_run_count, total_run_time FROM dtable_run_script_statistics WHERE dtable_uuid = $b",
            {"b": BASE},
        )
    return (int(rows[0][0]), float(rows[0][1])) if rows else (0, 0.0)


def test_callbacks_require_the_token(client: testing.TestClient, store: Store) -> None:
    run_id = new_run(client)
    for path, body in (
        ("/script-running-callback/", {"script_id": run_id, "started_at": 1_750_000_000}),
        ("/script-result/", {"script_id": run_id, "success": True, "return_code": 0, "output": "x"}),
    ):
        for headers in ({}, {"Authorization": "Token nope"}):
            result = client.simulate_post(path, json=body, headers=headers)
            assert (result.status_code, result.text) == (403, texts.FORBIDDEN)
    assert runs.get_run(store, run_id)["state"] == "pending"  # type: ignore[index]
    assert base_stats(store) == (0, 0.0)


def test_unauthenticated_callbacks_when_enabled(config: Config, store: Store) -> None:
    app = create_app(replace(config, accept_unauthenticated_callbacks=True), store=store)
    client = testing.TestClient(app)
    run_id = new_run(client)
    running = client.simulate_post("/script-running-callback/", json={"script_id": run_id, "started_at": 1e9})
    assert running.json == {"success": True}
    result = client.simulate_post("/script-result/", json={"script_id": run_id, "success": False, "output": "E"})
    assert result.json == {"success": True}
    script = runs.get_run(store, run_id)
    assert script is not None and script["state"] == "finished" and script["success"] is False
    # the rest of the API still needs the token
    assert client.simulate_post("/run-script/", json={}).status_code == 403


def test_duplicate_and_late_results_are_acknowledged_not_counted(client: testing.TestClient, store: Store) -> None:
    run_id = new_run(client)
    assert finish(client, run_id, output="first", spend_time=3).json == {"success": True}
    assert base_stats(store) == (1, 3.0)
    again = finish(client, run_id, output="second", success=False, spend_time=50)
    assert (again.status_code, again.json) == (200, {"success": True})
    late_running = client.simulate_post("/script-running-callback/", json={"script_id": run_id}, headers=AUTH)
    assert late_running.json == {"success": True}
    script = runs.get_run(store, run_id)
    assert script is not None
    assert (script["state"], script["output"], script["success"]) == ("finished", "first", True)
    assert base_stats(store) == (1, 3.0)


def test_unknown_run_is_404_with_upstreams_json(client: testing.TestClient) -> None:
    for path in ("/script-running-callback/", "/script-result/"):
        result = client.simulate_post(path, json={"script_id": 424242}, headers=AUTH)
        assert (result.status_code, result.json) == (404, {"error_msg": "Script not found"})
        assert result.headers["content-type"].startswith("application/json")


def test_result_without_running_callback_or_times(client: testing.TestClient, store: Store) -> None:
    """An upstream starter that fails early sends neither started_at nor spend_time."""
    run_id = new_run(client)
    result = client.simulate_post(
        "/script-result/",
        json={"script_id": run_id, "success": False, "return_code": None, "output": "Fail to get script",
              "spend_time": None, "task_log_id": None},
        headers=AUTH,
    )  # fmt: skip
    assert result.json == {"success": True}
    script = runs.get_run(store, run_id)
    assert script is not None and script["state"] == "finished"
    assert script["started_at"] != "" and script["finished_at"] is not None
    assert base_stats(store) == (1, 0.0)


def test_statistics_follow_owner_and_team_rules(client: testing.TestClient, store: Store) -> None:
    finish(client, new_run(client, owner="alice@auth.local", org_id=7), spend_time=2)
    finish(client, new_run(client, owner="5@seafile_group", org_id=-1), spend_time=4)
    finish(client, new_run(client, owner="bob@auth.local", org_id=-1), spend_time=8)
    with db_session:
        users = dict(store.db.select("SELECT username, total_run_count FROM user_run_script_statistics"))
        orgs = dict(store.db.select("SELECT org_id, total_run_count FROM org_run_script_statistics"))
    assert users == {"alice@auth.local": 1, "bob@auth.local": 1}
    assert orgs == {7: 1}
    assert base_stats(store) == (3, 14.0)


def test_fail_run_is_callable_without_http(client: testing.TestClient, store: Store) -> None:
    run_id = new_run(client)
    assert runs.fail_run(store, run_id, "sandbox lost") is runs.Outcome.APPLIED
    assert runs.fail_run(store, run_id, "sandbox lost") is runs.Outcome.ALREADY_FINISHED
    assert runs.fail_run(store, 999999, "x") is runs.Outcome.NOT_FOUND
    script = runs.get_run(store, run_id)
    assert script is not None and (script["output"], script["success"]) == ("sandbox lost", False)
    assert base_stats(store)[0] == 0  # ended by the scheduler, not by a result of its own: not counted


MALFORMED = [
    ("started_at", "yesterday"),
    ("started_at", 1e300),
    ("started_at", -5),
    ("spend_time", "long"),
    ("spend_time", -1),
    ("output", 5),
    ("output", {"text": "x"}),
    ("return_code", "0"),
    ("return_code", 2**40),
    ("success", "yes"),
]


@pytest.mark.parametrize(("field", "value"), MALFORMED)
def test_a_malformed_result_is_stored_as_failed_saying_what_was_wrong(
    client: testing.TestClient, store: Store, field: str, value: Any
) -> None:
    """Refusing it would lose the run's result; it is kept, as a failure that names the bad field."""
    run_id = new_run(client)
    body = {"script_id": run_id, "success": True, "return_code": 0, "output": "partial output",
            "started_at": 1_750_000_000, "spend_time": 2, field: value}  # fmt: skip
    result = client.simulate_post("/script-result/", json=body, headers=AUTH)
    assert (result.status_code, result.json) == (200, {"success": True})
    script = runs.get_run(store, run_id)
    assert script is not None and script["state"] == "finished" and script["success"] is False
    assert f"{field}: " in script["output"] and "invalid fields" in script["output"], script["output"]
    if field != "output":
        assert script["output"].startswith("partial output\n[")  # the valid fields are kept
    if field != "return_code":
        assert script["return_code"] == 0
    assert base_stats(store)[0] == 1
    # Still idempotent: the proper result arriving later changes nothing and counts nothing.
    assert finish(client, run_id, output="late and valid", spend_time=1).json == {"success": True}
    assert runs.get_run(store, run_id)["output"] == script["output"]  # type: ignore[index]
    assert base_stats(store)[0] == 1


def test_a_malformed_result_for_a_finished_run_changes_nothing(client: testing.TestClient, store: Store) -> None:
    run_id = new_run(client)
    finish(client, run_id, output="first", spend_time=3)
    again = client.simulate_post("/script-result/", json={"script_id": run_id, "success": "yes"}, headers=AUTH)
    assert (again.status_code, again.json) == (200, {"success": True})
    script = runs.get_run(store, run_id)
    assert script is not None and (script["output"], script["success"]) == ("first", True)
    assert base_stats(store) == (1, 3.0)


def test_a_huge_bad_field_is_named_not_copied(client: testing.TestClient, store: Store) -> None:
    run_id = new_run(client)
    body = {"script_id": run_id, "output": "ok", "return_code": ["x" * 100_000]}
    assert client.simulate_post("/script-result/", json=body, headers=AUTH).status_code == 200
    output = runs.get_run(store, run_id)["output"]  # type: ignore[index]
    assert "return_code: " in output and len(output) < 1000


@pytest.mark.parametrize("started_at", ["yesterday", 1e300, -5, [1]])
def test_a_malformed_running_callback_marks_the_run_running_at_arrival(
    client: testing.TestClient, store: Store, started_at: Any
) -> None:
    run_id = new_run(client)
    body = {"script_id": run_id, "started_at": started_at}
    result = client.simulate_post("/script-running-callback/", json=body, headers=AUTH)
    assert (result.status_code, result.json) == (200, {"success": True})
    script = runs.get_run(store, run_id)
    assert script is not None and script["state"] == "running" and script["started_at"] != ""
