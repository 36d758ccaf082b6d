"""The /_stub/ control API: set up bases, scripts, rows, limits, clock; read what the pipeline did."""

from __future__ import annotations

import time

import pytest
import requests
from falcon import testing

from tests.seatable_stub import StubConfig, StubServer, create_app
from tests.seatable_stub.state import Base

from .conftest import SECRET, web_headers

UUID = "5c264e76-0e5a-448a-9f34-580b551364ca"


def test_register_base_script_and_rows_then_read_them_back(stub: StubServer) -> None:
    created = requests.post(
        f"{stub.url}/_stub/bases",
        json={
            "uuid": UUID,
            "name": "Projects",
            "use_api_gateway": False,
            "workspace_id": 4,
            "tables": ["Tasks"],
        },
        timeout=5,
    )
    assert created.status_code == 201
    assert created.json() == {
        "uuid": UUID,
        "name": "Projects",
        "use_api_gateway": False,
        "workspace_id": 4,
        "scripts": [],
        "tables": {"Tasks": []},
    }

    script = requests.post(
        f"{stub.url}/_stub/bases/{UUID}/scripts", json={"name": "a.py", "content": "print(1)"}, timeout=5
    )
    table = requests.post(
        f"{stub.url}/_stub/bases/{UUID.replace('-', '')}/tables", json={"name": "Log"}, timeout=5
    )
    seeded = requests.post(
        f"{stub.url}/_stub/bases/{UUID}/tables/Tasks/rows", json={"rows": [{"Name": "t1"}]}, timeout=5
    )
    assert (script.status_code, table.status_code, seeded.status_code) == (201, 201, 201)
    assert len(seeded.json()["rows"][0]["_id"]) == 22

    rows = requests.get(f"{stub.url}/_stub/bases/{UUID}/tables/Tasks/rows", timeout=5).json()["rows"]
    assert rows == seeded.json()["rows"]
    described = requests.get(f"{stub.url}/_stub/bases/{UUID}", timeout=5).json()
    assert described["scripts"] == ["a.py"] and set(described["tables"]) == {"Tasks", "Log"}
    assert [b["uuid"] for b in requests.get(f"{stub.url}/_stub/bases", timeout=5).json()["bases"]] == [UUID]
    assert stub.seatable.base(UUID).scripts == {"a.py": "print(1)"}


def test_a_base_without_uuid_gets_one(stub: StubServer) -> None:
    created = requests.post(f"{stub.url}/_stub/bases", json={}, timeout=5).json()
    assert stub.seatable.base(created["uuid"]).tables.keys() == {"Table1"}
    assert created["use_api_gateway"] is True


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/_stub/bases", {"uuid": "nope"}, 400),
        ("POST", "/_stub/bases", {"colour": "red"}, 400),
        ("GET", f"/_stub/bases/{UUID}", None, 404),
        ("POST", f"/_stub/bases/{UUID}/scripts", {"name": "a.py", "content": "x"}, 404),
        ("GET", f"/_stub/bases/{UUID}/tables/Table1/rows", None, 404),
        ("GET", f"/_stub/bases/{UUID}/calls", None, 404),
        ("POST", "/_stub/clock", {"advance": 1, "reset": True}, 400),
        ("PUT", "/_stub/scripts-running-limits", {"username": "a"}, 400),
        ("GET", "/_stub/script-urls?dtable_uuid=nope", None, 400),
    ],
)
def test_control_errors(stub: StubServer, method: str, path: str, body: object, status: int) -> None:
    response = requests.request(method, f"{stub.url}{path}", json=body, timeout=5)
    assert response.status_code == status


def test_unknown_table_in_control_is_404(stub: StubServer, base: Base) -> None:
    url = f"{stub.url}/_stub/bases/{base.uuid36}/tables/Nope/rows"
    assert requests.get(url, timeout=5).status_code == 404
    assert requests.post(url, json={"rows": []}, timeout=5).status_code == 404


def test_limits_are_set_over_http(stub: StubServer) -> None:
    for body in ({"limit": 5, "username": "alice"}, {"limit": 2, "org_id": 9}, {"limit": 50}):
        assert (
            requests.put(f"{stub.url}/_stub/scripts-running-limits", json=body, timeout=5).status_code == 200
        )
    listed = requests.get(f"{stub.url}/_stub/scripts-running-limits", timeout=5).json()
    assert listed == {"default": 50, "users": {"alice": 5}, "orgs": {"9": 2}}
    assert stub.seatable.scripts_running_limit(org_id=9) == 2


def test_notifications_and_script_urls_are_readable(stub: StubServer, base: Base) -> None:
    requests.post(
        f"{stub.url}/api/v2.1/scripts-exceeded-notifications/",
        json={"owners": ["a"]},
        headers=web_headers(),
        timeout=5,
    )
    task = requests.get(
        f"{stub.url}/api/v2.1/dtable/{base.uuid}/run-script/hello.py/task/file/",
        headers=web_headers(),
        timeout=5,
    ).json()
    requests.get(task["script_url"], timeout=5)

    notes = requests.get(f"{stub.url}/_stub/notifications", timeout=5).json()["notifications"]
    assert [(n["org_ids"], n["owners"]) for n in notes] == [([], ["a"])]
    urls = requests.get(
        f"{stub.url}/_stub/script-urls",
        params={"dtable_uuid": base.uuid, "script_name": "hello.py"},
        timeout=5,
    ).json()["script_urls"]
    assert [(u["url"], u["fetch_count"], u["dtable_uuid"]) for u in urls] == [
        (task["script_url"], 1, base.uuid36)
    ]
    other = requests.get(f"{stub.url}/_stub/script-urls", params={"script_name": "other.py"}, timeout=5)
    assert other.json() == {"script_urls": []}


def test_calls_show_which_api_served_the_base(stub: StubServer, base: Base) -> None:
    assert requests.get(f"{stub.url}/_stub/bases/{base.uuid36}/calls", timeout=5).json() == {"calls": []}


def test_clock_moves_sets_and_resets(stub: StubServer) -> None:
    url = f"{stub.url}/_stub/clock"
    assert abs(requests.get(url, timeout=5).json()["now"] - time.time()) < 5
    assert requests.post(url, json={"advance": 100}, timeout=5).json()["offset"] == 100
    pinned = requests.post(url, json={"set": 2_000_000_000}, timeout=5).json()
    assert abs(pinned["now"] - 2_000_000_000) < 5
    assert requests.post(url, json={"reset": True}, timeout=5).json()["offset"] == 0
    stub.clock.advance(-30)
    assert stub.seatable.clock.offset == -30


def test_settings_change_token_lifetimes(stub: StubServer) -> None:
    url = f"{stub.url}/_stub/settings"
    assert requests.get(url, timeout=5).json() == {"temp_api_token_ttl": 3600, "access_token_ttl": 259200}
    assert requests.put(url, json={"temp_api_token_ttl": 60}, timeout=5).json()["temp_api_token_ttl"] == 60
    assert stub.seatable.temp_api_token_ttl == 60
    assert requests.put(url, json={"ttl": 1}, timeout=5).status_code == 400


def test_reset_forgets_everything(stub: StubServer, base: Base) -> None:
    stub.clock.advance(50)
    stub.seatable.set_scripts_running_limit(1)
    assert requests.post(f"{stub.url}/_stub/reset", timeout=5).json() == {"success": True}
    assert stub.seatable.all_bases() == [] and stub.clock.offset == 0
    assert stub.seatable.scripts_running_limit(username="x") == -1


def test_control_api_answers_loopback_only_unless_configured() -> None:
    guarded = testing.TestClient(create_app(StubConfig(secret=SECRET)))
    assert guarded.simulate_get("/_stub/bases", remote_addr="10.1.2.3").status_code == 403
    assert guarded.simulate_get("/_stub/bases", remote_addr="127.0.0.1").status_code == 200
    assert guarded.simulate_get("/_stub/bases", remote_addr="::1").status_code == 200
    # The SeaTable API itself stays reachable from runner containers.
    limit = guarded.simulate_get(
        "/api/v2.1/scripts-running-limit/",
        params={"username": "a"},
        headers=web_headers(),
        remote_addr="10.1.2.3",
    )
    assert limit.status_code == 200
    open_app = testing.TestClient(create_app(StubConfig(secret=SECRET, control_loopback_only=False)))
    assert open_app.simulate_get("/_stub/bases", remote_addr="10.1.2.3").status_code == 200
