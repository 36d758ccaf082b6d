"""dtable-web endpoints the scheduler calls: task file, one-time script URL, running limit, notifications."""

from __future__ import annotations

import time

import jwt
import pytest
import requests

from tests.seatable_stub import StubServer
from tests.seatable_stub.state import Base

from .conftest import SCRIPT, SECRET, web_headers


def task_file_url(stub: StubServer, dtable_uuid: str, name: str) -> str:
    return f"{stub.url}/api/v2.1/dtable/{dtable_uuid}/run-script/{name}/task/file/"


@pytest.mark.parametrize("spelling", ["dashed", "hex"])
def test_task_file_returns_one_time_url_and_temp_api_token(
    stub: StubServer, base: Base, spelling: str
) -> None:
    dtable_uuid = base.uuid36 if spelling == "dashed" else base.uuid
    response = requests.get(task_file_url(stub, dtable_uuid, "hello.py"), headers=web_headers(), timeout=5)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"script_url", "temp_api_token"}
    assert body["script_url"].startswith(f"{stub.url}/")
    claims = jwt.decode(body["temp_api_token"], SECRET, algorithms=["HS256"])
    assert claims["dtable_uuid"] == base.uuid36
    assert claims["app_name"] == "hello.py"
    assert claims["username"] == ""
    assert abs(claims["exp"] - (time.time() + 3600)) < 5
    assert set(claims) == {"dtable_uuid", "app_name", "exp", "username"}


def test_script_url_serves_the_script_exactly_once(stub: StubServer, base: Base) -> None:
    body = requests.get(task_file_url(stub, base.uuid36, "hello.py"), headers=web_headers(), timeout=5).json()

    first = requests.get(body["script_url"], timeout=5)
    second = requests.get(body["script_url"], timeout=5)

    assert first.status_code == 200
    assert first.text == SCRIPT
    assert second.status_code == 404
    [issued] = stub.seatable.script_urls(base.uuid36, "hello.py")
    assert issued.url == body["script_url"]
    assert issued.fetch_count == 2


def test_every_task_file_request_issues_a_new_url(stub: StubServer, base: Base) -> None:
    urls = {
        requests.get(task_file_url(stub, base.uuid, "hello.py"), headers=web_headers(), timeout=5).json()[
            "script_url"
        ]
        for _ in range(3)
    }
    assert len(urls) == 3
    assert [u.fetch_count for u in stub.seatable.script_urls()] == [0, 0, 0]
    assert requests.get(f"{stub.url}/seafhttp/files/not-issued/hello.py", timeout=5).status_code == 404


def test_absolute_urls_follow_the_callers_host(stub: StubServer, base: Base) -> None:
    # Runner containers reach the stub through another address than the host does.
    headers = {**web_headers(), "Host": "seatable.internal:8080"}
    body = requests.get(task_file_url(stub, base.uuid36, "hello.py"), headers=headers, timeout=5).json()
    assert body["script_url"].startswith("http://seatable.internal:8080/seafhttp/files/")

    token = {"Authorization": f"Token {body['temp_api_token']}", "Host": "10.0.2.2:9000"}
    access = requests.get(f"{stub.url}/api/v2.1/dtable/app-access-token/", headers=token, timeout=5).json()
    assert access["dtable_server"] == "http://10.0.2.2:9000/dtable-server/"
    assert access["dtable_db"] == "http://10.0.2.2:9000/dtable-db/"


@pytest.mark.parametrize(
    ("name", "status"),
    [("hello.txt", 400), ("hello", 400), ("missing.py", 404)],
)
def test_task_file_rejects_bad_or_unknown_script_names(
    stub: StubServer, base: Base, name: str, status: int
) -> None:
    response = requests.get(task_file_url(stub, base.uuid36, name), headers=web_headers(), timeout=5)
    assert response.status_code == status
    assert "error_msg" in response.json()


@pytest.mark.parametrize("dtable_uuid", ["8a4a2d8b-3f0e-4d5c-9a8b-1c2d3e4f5a6b", "not-a-uuid"])
def test_task_file_404_for_an_unknown_base(stub: StubServer, base: Base, dtable_uuid: str) -> None:
    response = requests.get(task_file_url(stub, dtable_uuid, "hello.py"), headers=web_headers(), timeout=5)
    assert response.status_code == 404


@pytest.mark.parametrize("headers", [{}, web_headers("wrong"), {"Authorization": SECRET}])
def test_task_file_needs_the_shared_secret(stub: StubServer, base: Base, headers: dict[str, str]) -> None:
    response = requests.get(task_file_url(stub, base.uuid36, "hello.py"), headers=headers, timeout=5)
    assert response.status_code == 403
    assert stub.seatable.script_urls() == []


def test_scripts_running_limit_defaults_to_unlimited_and_follows_settings(stub: StubServer) -> None:
    url = f"{stub.url}/api/v2.1/scripts-running-limit/"

    def limit(**params: str) -> int:
        response = requests.get(url, params=params, headers=web_headers(), timeout=5)
        assert response.status_code == 200
        return int(response.json()["scripts_running_limit"])

    assert limit(username="alice@auth.local") == -1
    assert limit(org_id="7") == -1
    stub.seatable.set_scripts_running_limit(5, username="alice@auth.local")
    stub.seatable.set_scripts_running_limit(2, org_id=7)
    stub.seatable.set_scripts_running_limit(100)
    assert limit(username="alice@auth.local") == 5
    assert limit(org_id="7") == 2
    assert limit(username="bob@auth.local") == 100
    assert limit(org_id="8") == 100


@pytest.mark.parametrize("params", [{}, {"org_id": "seven"}, {"username": ""}])
def test_scripts_running_limit_400_without_a_valid_owner(stub: StubServer, params: dict[str, str]) -> None:
    response = requests.get(
        f"{stub.url}/api/v2.1/scripts-running-limit/", params=params, headers=web_headers(), timeout=5
    )
    assert response.status_code == 400


def test_scripts_running_limit_needs_the_shared_secret(stub: StubServer) -> None:
    response = requests.get(
        f"{stub.url}/api/v2.1/scripts-running-limit/",
        params={"username": "a"},
        headers=web_headers("nope"),
        timeout=5,
    )
    assert response.status_code == 403


def test_exceeded_notifications_are_recorded(stub: StubServer) -> None:
    url = f"{stub.url}/api/v2.1/scripts-exceeded-notifications/"
    first = requests.post(url, json={"org_ids": [3, 4]}, headers=web_headers(), timeout=5)
    second = requests.post(url, json={"owners": ["alice@auth.local"]}, headers=web_headers(), timeout=5)

    assert first.status_code == second.status_code == 200
    assert first.json() == {"success": True}
    notes = stub.seatable.notifications
    assert [(n.org_ids, n.owners) for n in notes] == [((3, 4), ()), ((), ("alice@auth.local",))]


@pytest.mark.parametrize("body", [{}, {"org_ids": []}, {"org_ids": ["3"]}, {"owners": "alice"}, [1, 2]])
def test_exceeded_notifications_400_for_bad_bodies(stub: StubServer, body: object) -> None:
    response = requests.post(
        f"{stub.url}/api/v2.1/scripts-exceeded-notifications/", json=body, headers=web_headers(), timeout=5
    )
    assert response.status_code == 400
    assert stub.seatable.notifications == []


def test_exceeded_notifications_400_for_non_json(stub: StubServer) -> None:
    response = requests.post(
        f"{stub.url}/api/v2.1/scripts-exceeded-notifications/",
        data=b"org_ids=3",
        headers={**web_headers(), "Content-Type": "application/json"},
        timeout=5,
    )
    assert response.status_code == 400


def test_exceeded_notifications_need_the_shared_secret(stub: StubServer) -> None:
    response = requests.post(
        f"{stub.url}/api/v2.1/scripts-exceeded-notifications/", json={"org_ids": [1]}, timeout=5
    )
    assert response.status_code == 403
    assert stub.seatable.notifications == []


def test_script_names_with_spaces_and_unicode_work(stub: StubServer, base: Base) -> None:
    stub.seatable.add_script(base.uuid, "Größe prüfen.py", "print('ok')")
    body = requests.get(
        task_file_url(stub, base.uuid36, "Größe prüfen.py"), headers=web_headers(), timeout=5
    ).json()
    assert " " not in body["script_url"]
    assert requests.get(body["script_url"], timeout=5).text == "print('ok')"
