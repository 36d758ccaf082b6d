"""Hostile and broken input: always a 4xx with a message, never a 500 or a traceback."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from falcon import testing

from scheduler import texts
from scheduler.app import create_app
from scheduler.config import Config
from scheduler.db import Store
from tests.scheduler.conftest import AUTH, BASE, new_run

ABSURD_NUMBERS = ["2147483647", "-2147483648", "99999999999999999999", "1e400", "0x10", "NaN"]
SQL_METACHARACTERS = [
    *ABSURD_NUMBERS,
    "'",
    '"',
    "`",
    "'; DROP TABLE script_log; --",
    "1 OR 1=1",
    "%",
    "_",
    "\\",
    "\x00",
    "😀" * 3,
]

GET_ENDPOINTS: list[tuple[str, list[str]]] = [
    ("/run-script/1/", ["dtable_uuid", "script_name"]),
    ("/tasks/{uuid}/a.py/logs/", ["page", "per_page", "org_by"]),
    ("/scripts-running-count/", ["username", "org_id", "month"]),
    ("/admin/statistics/scripts-running/by-user/", ["month", "order_by", "direction", "page", "per_page"]),
    ("/admin/statistics/scripts-running/by-org/", ["month", "order_by", "page", "per_page"]),
    ("/admin/statistics/scripts-running/by-base/", ["month", "order_by", "page", "per_page"]),
    ("/admin/runs/", ["org_id", "base_uuid", "start", "end", "page", "per_page"]),
    ("/admin/statistics/by-base/", ["org_id", "start", "end", "page", "per_page"]),
    ("/admin/statistics/by-day/", ["org_id", "base_uuid", "start", "end", "page", "per_page"]),
]


def assert_clean_4xx(result: testing.Result, context: Any) -> None:
    assert 400 <= result.status_code < 500, (context, result.status_code, result.text)
    assert "Traceback" not in result.text and 'File "' not in result.text, context
    assert result.text, context


def assert_not_500(result: testing.Result, context: Any) -> None:
    assert result.status_code < 500, (context, result.status_code, result.text)
    assert "Traceback" not in result.text, context


def test_metacharacters_in_every_query_parameter(client: testing.TestClient) -> None:
    new_run(client)
    for path, names in GET_ENDPOINTS:
        for name in names:
            for value in SQL_METACHARACTERS:
                params = {"dtable_uuid": BASE, "script_name": "a.py", "org_id": "1", name: value}
                result = client.simulate_get(path.format(uuid=BASE), params=params, headers=AUTH)
                assert_not_500(result, (path, name, value))
    for value in SQL_METACHARACTERS:
        result = client.simulate_get(f"/tasks/{BASE}/{value}/logs/", headers=AUTH)
        assert_not_500(result, value)
        assert result.status_code == 400 or result.json["count"] == 0


@pytest.mark.parametrize(
    "value",
    [None, True, 1.5, -5, 2**70, "", "x" * 300, [], {}, "'; DROP TABLE script_log; --", "\x00", "😀", f"{BASE}\n"],
)
@pytest.mark.parametrize("field", ["dtable_uuid", "script_name", "owner", "org_id", "scripts_running_limit",
                                   "operate_from"])  # fmt: skip
def test_wrong_types_in_run_script(client: testing.TestClient, field: str, value: Any) -> None:
    body = {"dtable_uuid": BASE, "script_name": "a.py", "owner": "alice@auth.local", "org_id": 7,
            "scripts_running_limit": -1, field: value}  # fmt: skip
    result = client.simulate_post("/run-script/", json=body, headers=AUTH)
    if result.status_code == 200:  # some values are legitimately accepted (e.g. odd but valid names)
        run = client.simulate_get(
            f"/run-script/{result.json['script_id']}/",
            params={"dtable_uuid": BASE, "script_name": body["script_name"]},
            headers=AUTH,
        )
        assert_not_500(run, (field, value))
        if field in ("script_name", "owner", "operate_from") and isinstance(value, str) and run.status_code == 200:
            assert run.json["script"][field] == value  # stored exactly, not interpreted
        return
    assert_clean_4xx(result, (field, value))
    assert result.text == texts.PARAMETERS_INVALID


@pytest.mark.parametrize("path", ["/script-result/", "/script-running-callback/"])
@pytest.mark.parametrize(
    "body",
    [
        {},
        {"script_id": "1; DROP TABLE script_log"},
        {"script_id": -1},
        {"script_id": 2**40},
        {"script_id": True},
        {"script_id": None, "success": True},
    ],
)
def test_callback_bodies_that_name_no_run(client: testing.TestClient, path: str, body: dict[str, Any]) -> None:
    """Without a valid script_id there is no run to store anything on: 400. (Other malformed fields are
    salvaged: tests/scheduler/test_callbacks.py.)"""
    new_run(client)
    result = client.simulate_post(path, json=body, headers=AUTH)
    assert_clean_4xx(result, body)
    assert result.text == texts.PARAMETERS_INVALID


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"null", b"\xff\xfe", b"[" * 100_000, b'{"a": NaN'])
@pytest.mark.parametrize("path", ["/run-script/", "/run-draft-script/", "/script-result/", "/script-running-callback/"])
def test_non_json_bodies(client: testing.TestClient, path: str, raw: bytes) -> None:
    result = client.simulate_post(path, body=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert_clean_4xx(result, raw[:20])
    if raw.startswith(b"[" * 1000):  # over the route's budget (values, or bytes too): refused before parsing
        assert result.status_code == 413
        assert result.text in (texts.BODY_TOO_MANY_VALUES, texts.BODY_TOO_LARGE)
    else:
        assert result.text == texts.BAD_REQUEST


def test_body_size_is_limited(config: Config, store: Store) -> None:
    client = testing.TestClient(create_app(replace(config, max_body_bytes=4096), store=store))
    body = {"dtable_uuid": BASE, "script_name": "a.py", "owner": "o", "context_data": {"x": "y" * 5000}}
    result = client.simulate_post("/run-script/", json=body, headers=AUTH)
    assert (result.status_code, result.text) == (413, texts.BODY_TOO_LARGE)
    result = client.simulate_post("/script-result/", json={"script_id": 1, "output": "z" * 5000}, headers=AUTH)
    assert result.status_code == 413
    small = {**body, "context_data": {"x": "y"}}
    assert client.simulate_post("/run-script/", json=small, headers=AUTH).status_code == 200


def test_unknown_paths_and_methods(client: testing.TestClient) -> None:
    assert client.simulate_get("/nothing/", headers=AUTH).status_code == 404
    assert client.simulate_delete("/run-script/", headers=AUTH).status_code == 405
    assert client.simulate_get("/run-script/", headers=AUTH).status_code == 405
