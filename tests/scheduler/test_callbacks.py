"""The running and result callbacks: each run's own secret, its next legal transition only, never double-counted.

The attacks of issue 20 are the tests: SeaTable's token, another run's secret or none at all change nothing; a
pending run that was never handed off cannot be marked running or finished; a start in the year 5138 or a
duration of 10^9 s is not believed; a replay is refused, and the secret is dead once the run finished.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
from falcon import testing
from pony.orm import db_session

from scheduler import lifecycle, runs, texts
from scheduler.app import create_app
from scheduler.config import Config
from scheduler.db import Store
from tests.scheduler.conftest import AUTH, BASE, callback_headers, finish, hand_off, new_run


def base_stats(store: Store) -> tuple[int, float]:
    with db_session:
        rows = store.db.select(
            "SELECT total_run_count, total_run_time FROM dtable_run_script_statistics WHERE dtable_uuid = $b",
            {"b": BASE},
        )
    return (int(rows[0][0]), float(rows[0][1])) if rows else (0, 0.0)


def refused(result: Any, status: int, why: str) -> None:
    assert (result.status_code, result.json["refused"]) == (status, why), result.text
    assert result.json["error_msg"]


def test_callbacks_need_the_runs_own_secret(client: testing.TestClient, store: Store) -> None:
    run_id = new_run(client)
    other = new_run(client)
    hand_off(store, run_id)
    others_secret = callback_headers(client, other)
    for path, body in (
        ("/script-running-callback/", {"script_id": run_id, "started_at": 1_750_000_000}),
        ("/script-result/", {"script_id": run_id, "success": True, "return_code": 0, "output": "x"}),
    ):
        for headers in ({}, {"Authorization": "Token nope"}, AUTH, others_secret):  # AUTH: SeaTable's own token
            refused(client.simulate_post(path, json=body, headers=headers), 403, "secret")
    assert runs.get_run(store, run_id)["state"] == "pending"  # type: ignore[index]
    assert base_stats(store) == (0, 0.0)


def test_a_run_never_handed_off_cannot_run_or_finish(config: Config, store: Store) -> None:
    """Issue 20: any holder of the callback token could mark a pending, never-dispatched run "running"."""
    for unauthenticated in (False, True):
        client = testing.TestClient(create_app(replace(config, accept_unauthenticated_callbacks=unauthenticated),
                                               store=store))
        run_id = new_run(client)
        for path in ("/script-running-callback/", "/script-result/"):
            result = client.simulate_post(path, json={"script_id": run_id, "success": True}, headers={})
            if unauthenticated:
                refused(result, 409, "not-handed-off")
            else:
                refused(result, 403, "secret")
        assert runs.get_run(store, run_id)["state"] == "pending"  # type: ignore[index]


def test_running_once_result_once_then_the_secret_is_dead(client: testing.TestClient, store: Store) -> None:
    run_id = new_run(client)
    headers = callback_headers(client, run_id)
    running = {"script_id": run_id, "started_at": time.time() - 2}
    assert client.simulate_post("/script-running-callback/", json=running, headers=headers).json == {"success": True}
    refused(client.simulate_post("/script-running-callback/", json=running, headers=headers), 409, "replay")
    assert finish(client, run_id, output="first", spend_time=1.5).json == {"success": True}
    assert base_stats(store) == (1, 1.5)
    refused(finish(client, run_id, output="second", success=False, spend_time=1), 409, "finished")
    refused(client.simulate_post("/script-running-callback/", json=running, headers=headers), 409, "finished")
    script = runs.get_run(store, run_id)
    assert script is not None
    assert (script["state"], script["output"], script["success"]) == ("finished", "first", True)
    assert base_stats(store) == (1, 1.5)


def test_the_secret_is_bound_to_the_hand_off(client: testing.TestClient, store: Store) -> None:
    """Handed off again (the first node provably never got it), the run answers only to the new secret."""

    run_id = new_run(client)
    first = hand_off(store, run_id, node="http://node-a:8088")
    assert lifecycle.requeue(store, [run_id], "http://node-a:8088") == 1
    second = hand_off(store, run_id, node="http://node-b:8088")
    body = {"script_id": run_id, "success": True, "output": "from node a"}
    refused(client.simulate_post("/script-result/", json=body, headers={"Authorization": f"Token {first}"}),
            403, "secret")
    assert finish(client, run_id, headers={"Authorization": f"Bearer {second}"}).json == {"success": True}


def test_times_that_cannot_be_true_are_not_believed(client: testing.TestClient, store: Store) -> None:
    """Issue 20: started_at in the year 5138 kept a run "running" forever; 10^9 s went into the statistics."""
    run_id = new_run(client)
    headers = callback_headers(client, run_id)
    future = {"script_id": run_id, "started_at": 1e11}  # the year 5138
    assert client.simulate_post("/script-running-callback/", json=future, headers=headers).status_code == 200
    with db_session:
        [started] = store.db.select("SELECT started_at FROM script_log WHERE id = $i", {"i": run_id})
    started = lifecycle.as_datetime(started)
    assert started is not None and abs((started - store.clock.now()).total_seconds()) < 60  # arrival time instead
    result = finish(client, run_id, output="done", spend_time=1e9, started_at=1e11)
    assert result.json == {"success": True}
    script = runs.get_run(store, run_id)
    assert script is not None and script["state"] == "finished" and script["success"] is False
    assert texts.STARTED_IN_FUTURE in script["output"] and texts.DURATION_TOO_LONG in script["output"]
    assert base_stats(store)[1] < 60

    early = new_run(client)
    before_created = {"script_id": early, "started_at": time.time() - 86400}
    assert finish(client, early, started_at=before_created["started_at"]).status_code == 200
    assert texts.STARTED_BEFORE_CREATED in runs.get_run(store, early)["output"]  # type: ignore[index]

    # A "success" whose duration cannot be true is stored as failed, in the outcome column as in `success`.
    claimed = new_run(client)
    assert finish(client, claimed, outcome="success", spend_time=1e9).status_code == 200
    with db_session:
        [(success, outcome)] = store.db.select("SELECT success, outcome FROM script_log WHERE id = $i", {"i": claimed})
    assert (bool(success), outcome) == (False, "failed")


def test_unauthenticated_callbacks_when_enabled(config: Config, store: Store) -> None:
    app = create_app(replace(config, accept_unauthenticated_callbacks=True), store=store)
    client = testing.TestClient(app)
    run_id = new_run(client)
    hand_off(store, run_id)
    running = client.simulate_post("/script-running-callback/", json={"script_id": run_id, "started_at": time.time()})
    assert running.json == {"success": True}
    result = client.simulate_post("/script-result/", json={"script_id": run_id, "success": False, "output": "E"},
                                  headers=AUTH)  # an old starter sending SeaTable's token: as unauthenticated
    assert result.json == {"success": True}
    script = runs.get_run(store, run_id)
    assert script is not None and script["state"] == "finished" and script["success"] is False
    refused(client.simulate_post("/script-result/", json={"script_id": run_id, "output": "again"}), 409, "finished")
    # the rest of the API still needs the token
    assert client.simulate_post("/run-script/", json={}).status_code == 403


def test_unknown_run_is_404_with_upstreams_json(client: testing.TestClient) -> None:
    for path in ("/script-running-callback/", "/script-result/"):
        result = client.simulate_post(path, json={"script_id": 424242}, headers={"Authorization": "Token " + "x" * 40})
        assert (result.status_code, result.json) == (404, {"error_msg": "Script not found"})
        assert result.headers["content-type"].startswith("application/json")


def test_result_without_running_callback_or_times(client: testing.TestClient, store: Store) -> None:
    """An upstream starter that fails early sends neither started_at nor spend_time."""
    run_id = new_run(client)
    result = client.simulate_post(
        "/script-result/",
        json={"script_id": run_id, "success": False, "return_code": None, "output": "Fail to get script",
              "spend_time": None, "task_log_id": None},
        headers=callback_headers(client, run_id),
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
            "started_at": time.time() - 5, "spend_time": 2, field: value}  # fmt: skip
    result = client.simulate_post("/script-result/", json=body, headers=callback_headers(client, run_id))
    assert (result.status_code, result.json) == (200, {"success": True})
    script = runs.get_run(store, run_id)
    assert script is not None and script["state"] == "finished" and script["success"] is False
    assert f"{field}: " in script["output"] and "invalid fields" in script["output"], script["output"]
    if field != "output":
        assert script["output"].startswith("partial output\n[")  # the valid fields are kept
    if field != "return_code":
        assert script["return_code"] == 0
    assert base_stats(store)[0] == 1
    # Once only: the proper result arriving later is refused, changes nothing and counts nothing.
    assert finish(client, run_id, output="late and valid", spend_time=1).status_code == 409
    assert runs.get_run(store, run_id)["output"] == script["output"]  # type: ignore[index]
    assert base_stats(store)[0] == 1


def test_a_malformed_result_for_a_finished_run_changes_nothing(client: testing.TestClient, store: Store) -> None:
    run_id = new_run(client)
    finish(client, run_id, output="first", spend_time=3)
    again = client.simulate_post("/script-result/", json={"script_id": run_id, "success": "yes"},
                                 headers=callback_headers(client, run_id))
    refused(again, 409, "finished")
    script = runs.get_run(store, run_id)
    assert script is not None and (script["output"], script["success"]) == ("first", True)
    assert base_stats(store) == (1, 3.0)


def test_a_huge_bad_field_is_named_not_copied(client: testing.TestClient, store: Store) -> None:
    run_id = new_run(client)
    body = {"script_id": run_id, "output": "ok", "return_code": ["x" * 100_000]}
    headers = callback_headers(client, run_id)
    assert client.simulate_post("/script-result/", json=body, headers=headers).status_code == 200
    output = runs.get_run(store, run_id)["output"]  # type: ignore[index]
    assert "return_code: " in output and len(output) < 1000


@pytest.mark.parametrize("started_at", ["yesterday", 1e300, -5, [1]])
def test_a_malformed_running_callback_marks_the_run_running_at_arrival(
    client: testing.TestClient, store: Store, started_at: Any
) -> None:
    run_id = new_run(client)
    body = {"script_id": run_id, "started_at": started_at}
    result = client.simulate_post("/script-running-callback/", json=body, headers=callback_headers(client, run_id))
    assert (result.status_code, result.json) == (200, {"success": True})
    script = runs.get_run(store, run_id)
    assert script is not None and script["state"] == "running" and script["started_at"] != ""
