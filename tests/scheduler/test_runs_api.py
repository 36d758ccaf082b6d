"""POST /run-script/, POST /run-draft-script/ and GET /run-script/<id>/ through the Falcon app."""

from __future__ import annotations

import re
import time

from falcon import testing

from scheduler import texts
from scheduler.db import Store
from tests.scheduler.conftest import (
    AUTH,
    BASE,
    BASE_HEX,
    OTHER_BASE,
    StubSeaTable,
    callback_headers,
    finish,
    new_run,
)

ISO_WITH_OFFSET = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")


def status(client: testing.TestClient, run_id: int, **params: str) -> testing.Result:
    query = {"dtable_uuid": BASE, "script_name": "a.py", **params}
    return client.simulate_get(f"/run-script/{run_id}/", params=query, headers=AUTH)


def test_ping_needs_no_auth(client: testing.TestClient) -> None:
    result = client.simulate_get("/ping/")
    assert (result.status_code, result.text) == (200, "Pong")


def test_new_run_is_pending_with_upstream_shape(client: testing.TestClient) -> None:
    context = {"table": "T", "row": {"_id": "r1"}, "current_user_id": 3}
    run_id = new_run(client, context_data=context)
    script = status(client, run_id).json["script"]
    assert list(script) == [
        "id", "dtable_uuid", "owner", "org_id", "script_name", "started_at", "finished_at", "success",
        "return_code", "operate_from", "state", "created_at", "context_data", "output",
    ]  # fmt: skip
    assert script["id"] == run_id
    assert script["state"] == "pending"
    assert script["operate_from"] == "manualy"
    assert script["started_at"] == ""
    assert script["finished_at"] is None
    assert script["success"] is None and script["return_code"] is None and script["output"] is None
    assert script["context_data"] == context
    assert ISO_WITH_OFFSET.match(script["created_at"])


def test_finished_run_reports_result_and_times(client: testing.TestClient, store: Store) -> None:
    run_id = new_run(client, operate_from="automation-rule")
    started = int(time.time()) - 30
    assert client.simulate_post(
        "/script-running-callback/", json={"script_id": run_id, "started_at": started},
        headers=callback_headers(client, run_id),
    ).json == {"success": True}
    assert status(client, run_id).json["script"]["state"] == "running"
    assert finish(client, run_id, output="héllo ✓ 🙂", spend_time=12.25, return_code=0).status_code == 200
    script = status(client, run_id).json["script"]
    assert script["state"] == "finished" and script["success"] is True and script["return_code"] == 0
    assert script["output"] == "héllo ✓ 🙂"
    assert script["operate_from"] == "automation-rule"
    assert script["started_at"] == store.clock.iso(store.clock.from_epoch(started))
    assert script["finished_at"] == store.clock.iso(store.clock.from_epoch(started + 12))
    assert ISO_WITH_OFFSET.match(script["finished_at"])


def test_status_compares_uuid_without_dashes(client: testing.TestClient) -> None:
    run_id = new_run(client)
    assert status(client, run_id, dtable_uuid=BASE_HEX).status_code == 200
    assert status(client, run_id, dtable_uuid=BASE_HEX.upper()).status_code == 200


def test_status_errors(client: testing.TestClient) -> None:
    run_id = new_run(client)
    assert (status(client, 999999).status_code, status(client, 999999).text) == (404, texts.NOT_FOUND)
    other = status(client, run_id, dtable_uuid=OTHER_BASE)
    assert (other.status_code, other.text) == (400, texts.BAD_REQUEST)
    assert status(client, run_id, script_name="b.py").status_code == 400
    assert client.simulate_get("/run-script/abc/", params={"dtable_uuid": BASE, "script_name": "a.py"},
                               headers=AUTH).text == texts.BAD_REQUEST  # fmt: skip
    missing = client.simulate_get(f"/run-script/{run_id}/", params={"dtable_uuid": BASE}, headers=AUTH)
    assert (missing.status_code, missing.text) == (400, texts.PARAMETERS_INVALID)


def test_auth_token_and_bearer(client: testing.TestClient) -> None:
    run_id = new_run(client)
    params = {"dtable_uuid": BASE, "script_name": "a.py"}
    bearer = {"Authorization": AUTH["Authorization"].replace("Token", "Bearer")}
    assert client.simulate_get(f"/run-script/{run_id}/", params=params, headers=bearer).status_code == 200
    for headers in (
        {},
        {"Authorization": "Token wrong"},
        {"Authorization": "Basic x"},
        {"Authorization": "Token "},
    ):
        result = client.simulate_get(f"/run-script/{run_id}/", params=params, headers=headers)
        assert (result.status_code, result.text) == (403, texts.FORBIDDEN)
        result = client.simulate_post("/run-script/", json={}, headers=headers)
        assert (result.status_code, result.text) == (403, texts.FORBIDDEN)


def test_run_script_parameter_errors(client: testing.TestClient) -> None:
    good = {"dtable_uuid": BASE, "script_name": "a.py", "owner": "alice@auth.local"}
    for missing in good:
        body = {k: v for k, v in good.items() if k != missing}
        result = client.simulate_post("/run-script/", json=body, headers=AUTH)
        assert (result.status_code, result.text) == (400, texts.PARAMETERS_INVALID), missing
    for not_an_object in ([1, 2], "x", 3, None):
        result = client.simulate_post("/run-script/", json=not_an_object, headers=AUTH)
        assert (result.status_code, result.text) == (400, texts.BAD_REQUEST)
    result = client.simulate_post("/run-script/", body=b"{not json", headers=AUTH)
    assert (result.status_code, result.text) == (400, texts.BAD_REQUEST)


def test_explicit_limit_counts_this_months_runs(client: testing.TestClient, seatable_stub: StubSeaTable) -> None:
    for _ in range(2):
        finish(client, new_run(client, scripts_running_limit=2))
    refused = client.simulate_post(
        "/run-script/",
        json={"dtable_uuid": BASE, "script_name": "a.py", "owner": "alice@auth.local", "org_id": 7,
              "scripts_running_limit": 2},
        headers=AUTH,
    )  # fmt: skip
    assert (refused.status_code, refused.text) == (400, texts.LIMIT_EXCEEDED)
    new_run(client, scripts_running_limit=3)
    new_run(client, org_id=8, scripts_running_limit=2)  # another team has its own count
    assert seatable_stub.requests == []  # an explicit limit needs no question to SeaTable


def test_missing_limit_is_asked_from_seatable(client: testing.TestClient, seatable_stub: StubSeaTable) -> None:
    seatable_stub.limit = 1
    finish(client, new_run(client, scripts_running_limit=None))
    assert seatable_stub.requests[-1]["path"] == "/api/v2.1/scripts-running-limit/"
    assert seatable_stub.requests[-1]["query"] == "org_id=7"
    assert seatable_stub.requests[-1]["auth"] == AUTH["Authorization"]
    body = {"dtable_uuid": BASE, "script_name": "a.py", "owner": "alice@auth.local", "org_id": 7,
            "scripts_running_limit": 0}  # fmt: skip
    result = client.simulate_post("/run-script/", json=body, headers=AUTH)
    assert (result.status_code, result.text) == (400, texts.LIMIT_EXCEEDED)
    # a user without a team is asked for by username
    new_run(client, org_id=-1, owner="bob@auth.local", scripts_running_limit=0)
    assert seatable_stub.requests[-1]["query"] == "username=bob%40auth.local"


def test_seatable_failure_refuses_like_upstream(client: testing.TestClient, seatable_stub: StubSeaTable) -> None:
    seatable_stub.status = 500
    body = {
        "dtable_uuid": BASE,
        "script_name": "a.py",
        "owner": "alice@auth.local",
        "scripts_running_limit": 0,
    }
    result = client.simulate_post("/run-script/", json=body, headers=AUTH)
    assert (result.status_code, result.text) == (400, texts.LIMIT_EXCEEDED)


def test_group_owned_base_without_team_is_never_limited(
    client: testing.TestClient, seatable_stub: StubSeaTable
) -> None:
    seatable_stub.limit = 0
    new_run(client, owner="12@seafile_group", org_id=-1, scripts_running_limit=None)
    assert seatable_stub.requests == []


def test_draft_run(client: testing.TestClient, store: Store) -> None:
    """As upstream's PR #95: script_name required, an empty script_content allowed (an empty editor runs)."""
    body = {"dtable_uuid": BASE, "script_name": "x.py", "owner": "alice@auth.local", "org_id": 7,
            "script_content": "print(1)", "temp_api_token": "eyJ.jwt.sig"}  # fmt: skip
    result = client.simulate_post("/run-draft-script/", json=body, headers=AUTH)
    assert result.status_code == 200, result.text
    run_id = result.json["script_id"]
    script = status(client, run_id, script_name="x.py").json["script"]
    assert script["operate_from"] == "draft" and script["state"] == "pending"
    assert "temp_api_token" not in script and "script_content" not in script
    empty = client.simulate_post("/run-draft-script/", json={**body, "script_content": ""}, headers=AUTH)
    assert empty.status_code == 200, empty.text
    for missing in ("script_name", "script_content", "temp_api_token", "owner", "dtable_uuid"):
        partial = {k: v for k, v in body.items() if k != missing}
        bad = client.simulate_post("/run-draft-script/", json=partial, headers=AUTH)
        assert (bad.status_code, bad.text) == (400, texts.PARAMETERS_INVALID)
    # the token is kept only while the run waits, then erased
    token_sql = "SELECT draft_api_token, script_content FROM script_log WHERE id = $run_id"
    from pony.orm import db_session

    with db_session:
        assert store.db.select(token_sql, {"run_id": run_id})[0] == ("eyJ.jwt.sig", "print(1)")
    client.simulate_post("/script-running-callback/", json={"script_id": run_id},
                         headers=callback_headers(client, run_id))
    with db_session:
        assert store.db.select(token_sql, {"run_id": run_id})[0] == (None, "print(1)")
    finish(client, run_id)
    with db_session:
        assert store.db.select(token_sql, {"run_id": run_id})[0] == (None, None)
        # the empty draft is stored as empty code, not as "no code": it is dispatched as a draft
        assert store.db.select(token_sql, {"run_id": empty.json["script_id"]})[0] == ("eyJ.jwt.sig", "")
