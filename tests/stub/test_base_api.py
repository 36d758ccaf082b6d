"""The base API driven by the real `seatable_api.Base` client, via the API gateway and via dtable-server."""

from __future__ import annotations

import re

import jwt
import pytest
import requests
from seatable_api import Base as SeaTableBase
from seatable_api.exception import AuthExpiredError

from tests.seatable_stub import StubServer
from tests.seatable_stub.resources.base_api import DTABLE_SERVER, GATEWAY
from tests.seatable_stub.state import Base

from .conftest import web_headers

ROW_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")


def temp_api_token(stub: StubServer, base: Base, script: str = "hello.py") -> str:
    """What the scheduler hands the runner: the token from a task-file request."""
    url = f"{stub.url}/api/v2.1/dtable/{base.uuid36}/run-script/{script}/task/file/"
    token: str = requests.get(url, headers=web_headers(), timeout=5).json()["temp_api_token"]
    return token


def authed(stub: StubServer, base: Base) -> SeaTableBase:
    client = SeaTableBase(temp_api_token(stub, base), stub.url)
    client.auth()
    return client


@pytest.fixture(params=[True, False], ids=["api-gateway", "dtable-server"])
def gateway(request: pytest.FixtureRequest, base: Base) -> bool:
    """Run a test once with the base behind the API gateway and once on plain dtable-server."""
    base.use_api_gateway = bool(request.param)
    return base.use_api_gateway


def test_auth_returns_what_seatable_returns(stub: StubServer, base: Base, gateway: bool) -> None:
    client = authed(stub, base)

    assert client.dtable_uuid == base.uuid36
    assert client.dtable_name == "Sales"
    assert client.workspace_id == 1
    assert client.use_api_gateway is gateway
    assert client.dtable_server_url == f"{stub.url}/dtable-server"
    assert client.dtable_db_url == f"{stub.url}/dtable-db"
    claims = jwt.decode(client.jwt_token, stub.config.access_token_key, algorithms=["HS256"])
    assert claims["dtable_uuid"] == base.uuid36
    assert claims["app_name"] == "hello.py"


def test_row_operations_with_the_real_client(stub: StubServer, base: Base, gateway: bool) -> None:
    client = authed(stub, base)

    appended = client.append_row("Table1", {"Name": "Alice", "Score": 3, "_id": "ignored"})
    assert ROW_ID.match(appended["_id"]) and appended["_id"] != "ignored"
    assert TIMESTAMP.match(appended["_ctime"]) and appended["_mtime"] == appended["_ctime"]
    assert appended["Name"] == "Alice"

    batch = client.batch_append_rows("Table1", [{"Name": "Bob", "Score": 9}, {"Name": "Carol", "Score": 1}])
    assert batch["inserted_row_count"] == 2

    fetched = client.get_row("Table1", appended["_id"])
    assert fetched == appended

    client.update_row("Table1", appended["_id"], {"Score": 4, "Note": "updated"})
    updated = client.get_row("Table1", appended["_id"])
    assert (updated["Score"], updated["Note"], updated["_ctime"]) == (4, "updated", appended["_ctime"])
    assert updated["_mtime"] >= appended["_mtime"]

    rows = client.list_rows("Table1")
    assert [row["Name"] for row in rows] == ["Alice", "Bob", "Carol"]
    assert [r["Name"] for r in client.list_rows("Table1", order_by="Score", desc=True)] == [
        "Bob",
        "Alice",
        "Carol",
    ]
    assert [r["Name"] for r in client.list_rows("Table1", start=1, limit=1)] == ["Bob"]

    client.delete_row("Table1", appended["_id"])
    assert [row["Name"] for row in stub.seatable.rows(base.uuid, "Table1")] == ["Bob", "Carol"]

    expected_api = GATEWAY if gateway else DTABLE_SERVER
    assert {call.api for call in stub.seatable.calls(base.uuid)} == {expected_api}


def test_response_shapes_match_the_api_in_use(stub: StubServer, base: Base, gateway: bool) -> None:
    client = authed(stub, base)
    rows = [{"Name": "a"}, {"Name": "b"}]
    added = client.batch_append_rows("Table1", rows)
    row_id = stub.seatable.rows(base.uuid, "Table1")[0]["_id"]
    deleted = client.delete_row("Table1", row_id)
    if gateway:
        assert set(added) == {"inserted_row_count", "row_ids", "first_row"}
        assert added["first_row"]["_id"] == row_id
        assert deleted == {"success": True, "deleted_rows": 1}
    else:
        assert added == {"inserted_row_count": 2}
        assert deleted == {"deleted_rows": 1}
    assert client.update_row("Table1", stub.seatable.rows(base.uuid, "Table1")[0]["_id"], {"x": 1}) == {
        "success": True
    }


def test_batch_update_and_delete_and_metadata(stub: StubServer, base: Base, gateway: bool) -> None:
    client = authed(stub, base)
    client.batch_append_rows("Table1", [{"Name": "a", "n": 1}, {"Name": "b", "n": 2}, {"Name": "c", "n": 3}])
    ids = [row["_id"] for row in stub.seatable.rows(base.uuid, "Table1")]

    client.batch_update_rows(
        "Table1", [{"row_id": ids[0], "row": {"n": 10}}, {"row_id": ids[1], "row": {"n": 20}}]
    )
    client.batch_delete_rows("Table1", [ids[2]])

    assert [row["n"] for row in stub.seatable.rows(base.uuid, "Table1")] == [10, 20]
    [table] = client.list_tables()
    assert table["name"] == "Table1"
    assert {c["name"]: c["type"] for c in table["columns"]} == {"Name": "text", "n": "number"}


def test_seeded_rows_and_other_tables(stub: StubServer, base: Base, gateway: bool) -> None:
    stub.seatable.add_table(base.uuid, "Orders")
    [seeded] = stub.seatable.add_rows(base.uuid, "Orders", [{"Item": "pen"}])
    client = authed(stub, base)

    assert client.get_row("Orders", seeded["_id"]) == seeded
    assert client.list_rows("Table1") == []


def test_unknown_table_and_row_are_404(stub: StubServer, base: Base, gateway: bool) -> None:
    client = authed(stub, base)
    with pytest.raises(ConnectionError) as unknown_table:
        client.list_rows("Nope")
    assert unknown_table.value.args[0] == 404
    with pytest.raises(ConnectionError) as unknown_row:
        client.get_row("Table1", "AAAAAAAAAAAAAAAAAAAAAA")
    assert unknown_row.value.args[0] == 404
    with pytest.raises(ConnectionError) as update_missing:
        client.update_row("Table1", "AAAAAAAAAAAAAAAAAAAAAA", {"a": 1})
    assert update_missing.value.args[0] == 404


def test_expired_temp_api_token_is_refused_by_the_stub_clock(stub: StubServer, base: Base) -> None:
    before = stub.clock.now()
    token = temp_api_token(stub, base)
    after = stub.clock.now()
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert int(before) + 3600 <= expires <= int(after) + 3600  # an hour, as dtable-web's task/file token

    # Pinned near the boundary (the clock keeps running, so a margin for a slow request on a loaded machine).
    stub.clock.set(expires - 10)
    SeaTableBase(token, stub.url).auth()

    stub.clock.set(expires)
    with pytest.raises(AuthExpiredError):
        SeaTableBase(token, stub.url).auth()

    stub.clock.reset()
    SeaTableBase(token, stub.url).auth()


def test_clock_control_endpoint_expires_tokens(stub: StubServer, base: Base) -> None:
    token = temp_api_token(stub, base)
    moved = requests.post(f"{stub.url}/_stub/clock", json={"advance": 3601}, timeout=5)
    assert moved.status_code == 200
    assert moved.json()["offset"] == 3601
    with pytest.raises(AuthExpiredError):
        SeaTableBase(token, stub.url).auth()


def test_tokens_issued_after_the_clock_moved_are_valid_from_then(stub: StubServer, base: Base) -> None:
    stub.clock.advance(10 * 3600)
    SeaTableBase(temp_api_token(stub, base), stub.url).auth()


def test_temp_api_token_ttl_can_be_shortened(stub: StubServer, base: Base) -> None:
    stub.seatable.temp_api_token_ttl = 0
    with pytest.raises(AuthExpiredError):
        SeaTableBase(temp_api_token(stub, base), stub.url).auth()


def test_expired_access_token_is_refused_on_row_calls(stub: StubServer, base: Base, gateway: bool) -> None:
    client = authed(stub, base)
    stub.clock.advance(3 * 24 * 3600 + 1)
    with pytest.raises(AuthExpiredError):
        client.list_rows("Table1")


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode({"dtable_uuid": "x", "exp": 4102444800}, "another-secret-that-is-long-enough-32b"),
        "not-a-jwt",
    ],
)
def test_forged_or_malformed_temp_api_token_is_401(stub: StubServer, base: Base, token: str) -> None:
    response = requests.get(
        f"{stub.url}/api/v2.1/dtable/app-access-token/",
        headers={"Authorization": f"Token {token}"},
        timeout=5,
    )
    assert response.status_code == 401
    with pytest.raises(ConnectionError):
        SeaTableBase(token, stub.url).auth()


def test_app_access_token_without_credentials_is_401(stub: StubServer) -> None:
    assert requests.get(f"{stub.url}/api/v2.1/dtable/app-access-token/", timeout=5).status_code == 401


def test_app_access_token_for_a_deleted_base_is_404(stub: StubServer, base: Base) -> None:
    token = temp_api_token(stub, base)
    stub.seatable.bases.clear()
    response = requests.get(
        f"{stub.url}/api/v2.1/dtable/app-access-token/",
        headers={"Authorization": f"Token {token}"},
        timeout=5,
    )
    assert response.status_code == 404


def test_access_token_opens_only_its_own_base(stub: StubServer, base: Base, gateway: bool) -> None:
    other = stub.seatable.add_base(name="Other")
    client = authed(stub, base)
    path = "/api-gateway/api/v2/dtables" if gateway else "/dtable-server/api/v1/dtables"
    response = requests.get(
        f"{stub.url}{path}/{other.uuid36}/rows/",
        params={"table_name": "Table1"},
        headers=client.headers,
        timeout=5,
    )
    assert response.status_code == 403
    assert (
        requests.get(
            f"{stub.url}{path}/{base.uuid36}/rows/", params={"table_name": "Table1"}, timeout=5
        ).status_code
        == 403
    )
    assert (
        requests.get(
            f"{stub.url}{path}/{base.uuid36}/rows/",
            params={"table_name": "Table1"},
            headers={"Authorization": "Token garbage"},
            timeout=5,
        ).status_code
        == 403
    )


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("POST", {"table_name": "Table1"}),
        ("POST", {"rows": [{"a": 1}]}),
        ("PUT", {"table_name": "Table1", "updates": "x"}),
        ("DELETE", {"table_name": "Table1", "row_ids": []}),
    ],
)
def test_malformed_gateway_bodies_are_400(
    stub: StubServer, base: Base, method: str, body: dict[str, object]
) -> None:
    client = authed(stub, base)
    response = requests.request(
        method,
        f"{stub.url}/api-gateway/api/v2/dtables/{base.uuid36}/rows/",
        json=body,
        headers=client.headers,
        timeout=5,
    )
    assert response.status_code == 400
    assert "error_message" in response.json()


def test_bad_paging_parameters_are_400(stub: StubServer, base: Base) -> None:
    client = authed(stub, base)
    response = requests.get(
        f"{stub.url}/api-gateway/api/v2/dtables/{base.uuid36}/rows/",
        params={"table_name": "Table1", "limit": "many"},
        headers=client.headers,
        timeout=5,
    )
    assert response.status_code == 400
