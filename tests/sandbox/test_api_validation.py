"""The sandbox API's input validation, in process: the Falcon app with a fake run service.

Every bad body gets a JSON 4xx and reaches no service; a good one is handed over once. One real-sandbox
smoke test of the same rules over gunicorn is `test_service.py::test_bad_input_over_real_http`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from falcon import testing

from sandbox.app import MAX_BODY, create_app
from sandbox.runs import Busy, Duplicate, RunRequest, Unavailable

TOKEN = "sandbox-test-token"
AUTH = {"Authorization": f"Token {TOKEN}"}
SECRET = "a-run-callback-secret-of-32-chars-or-more"  # the dispatcher issues one per run


@dataclass
class FakeService:
    """Stands in for RunService: records what the app hands over, answers as told."""

    submitted: list[RunRequest] = field(default_factory=list)
    refuse: Exception | None = None
    held: dict[int, str] = field(default_factory=dict)

    def submit(self, request: RunRequest) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.submitted.append(request)

    def status(self, script_id: int) -> str | None:
        return self.held.get(script_id)


@pytest.fixture
def service() -> FakeService:
    return FakeService()


@dataclass
class FakeNode:
    """Stands in for the node's health reports (sandbox.server.Sandbox.health and .ready)."""

    healthy: bool = True

    def health(self) -> tuple[bool, dict[str, object]]:
        return self.healthy, {"status": "ok" if self.healthy else "unhealthy"}

    def ready(self) -> tuple[bool, dict[str, object]]:
        return (True, {"node": "n", "slots": {"free": 1}}) if self.healthy else (False, {"error": "disk full"})


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


@pytest.fixture
def client(service: FakeService, node: FakeNode) -> testing.TestClient:
    return testing.TestClient(create_app([TOKEN], service, node.health, node.ready))


def run(**fields: Any) -> dict[str, Any]:
    """A valid hand-off body of run 7 with `fields` replaced: each bad body below is wrong in one field only."""
    return {"script_id": 7, "script_content": "x", "env": {}, "callback_secret": SECRET, **fields}


BAD_BODIES: list[tuple[str, Any, int]] = [
    ("not json", b"{nope", 400),
    ("a list", [1, 2], 400),
    ("no script_id", {"script_content": "x", "env": {}}, 400),
    ("string script_id", run(script_id="7"), 400),
    ("negative script_id", run(script_id=-1), 400),
    ("no script", {k: v for k, v in run().items() if k != "script_content"}, 400),
    ("script over 1 MiB", run(script_content="#" * ((1 << 20) + 1)), 400),
    ("multibyte script over 1 MiB", run(script_content="é" * ((1 << 19) + 1)), 400),
    ("env not an object", run(env="a=b"), 400),
    ("env key not an identifier", run(env={"A B": "1"}), 400),
    ("env key with =", run(env={"A=B": "1"}), 400),
    ("env value not a string", run(env={"A": 1}), 400),
    ("NUL in script", run(script_content="print(1)\x00"), 400),
    ("NUL in env value", run(env={"A": "a\x00b"}), 400),
    ("script_url not http", {**{k: v for k, v in run().items() if k != "script_content"},
                             "script_url": "file:///etc/passwd"}, 400),
    ("context a number", run(context_data=5), 400),
    ("no callback secret", {k: v for k, v in run().items() if k != "callback_secret"}, 400),
    ("callback secret too short", run(callback_secret="short"), 400),
]


@pytest.mark.parametrize(("name", "body", "status"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_bodies_get_a_json_4xx(client: testing.TestClient, service: FakeService, name: str, body: Any,
                                   status: int) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.simulate_post("/function/run-python", body=data,
                                    headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert isinstance(response.json["error"], str) and response.json["error"]
    assert "Traceback" not in response.text
    assert service.submitted == []


def test_auth_and_media_errors(client: testing.TestClient, service: FakeService) -> None:
    body = {"script_id": 9, "script_content": "print(1)", "env": {}, "callback_secret": SECRET}
    wrong = client.simulate_post("/function/run-python", json=body, headers={"Authorization": "Token wrong"})
    assert wrong.status_code == 403
    missing = client.simulate_post("/function/run-python", json=body, headers={"Authorization": "Token "})
    assert missing.json == {"error": "invalid or missing token"}
    form = client.simulate_post("/function/run-python", body="script_id=9",
                                headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415 and "error" in form.json
    huge = client.simulate_post("/function/run-python", body=b"x" * (MAX_BODY + 1),
                                headers={**AUTH, "Content-Type": "application/json"})
    assert huge.status_code == 413 and "error" in huge.json
    assert client.simulate_get("/function/runs/9", headers={"Authorization": "Token wrong"}).status_code == 403
    assert service.submitted == []


def test_a_good_body_is_handed_over_once(client: testing.TestClient, service: FakeService) -> None:
    body = {"script_id": 7, "script_content": "print(1)", "env": {"api_token": "t"}, "context_data": {"a": 1},
            "script_url": "http://ignored.example/x.py", "callback_secret": SECRET}
    response = client.simulate_post("/function/run-python", json=body, headers=AUTH)
    assert response.status_code == 202 and response.json == {"accepted": True}
    assert service.submitted == [RunRequest(script_id=7, env={"api_token": "t"}, context_data={"a": 1},
                                            script_content="print(1)", script_url=None, callback_secret=SECRET)]
    by_url = client.simulate_post("/function/run-python", headers=AUTH,
                                  json={"script_id": 8, "script_url": "https://files.example/x.py", "env": {},
                                        "callback_secret": SECRET})
    assert by_url.status_code == 202
    assert service.submitted[-1].script_url == "https://files.example/x.py"
    # A NUL in the context is data (a SeaTable cell may hold one): it reaches the script as escaped JSON.
    nul = client.simulate_post("/function/run-python", headers=AUTH,
                               json={"script_id": 9, "script_content": "x", "env": {}, "context_data": {"r": "a\x00b"},
                                     "callback_secret": SECRET})
    assert nul.status_code == 202 and service.submitted[-1].context_data == {"r": "a\x00b"}


def test_busy_and_duplicate_answers(client: testing.TestClient, service: FakeService) -> None:
    body = {"script_id": 120, "script_content": "x", "env": {}, "callback_secret": SECRET}
    service.refuse = Duplicate(120, "done")
    duplicate = client.simulate_post("/function/run-python", json=body, headers=AUTH)
    assert duplicate.status_code == 409 and "120" in duplicate.json["error"] and duplicate.json["state"] == "done"
    service.refuse = Unavailable("outbox full")
    unavailable = client.simulate_post("/function/run-python", json=body, headers=AUTH)
    assert unavailable.status_code == 503 and unavailable.json == {"error": "outbox full"}
    service.refuse = Busy()
    busy = client.simulate_post("/function/run-python", json=body, headers=AUTH)
    assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
    assert busy.json == {"error": "every slot is busy"}


def test_run_status_and_open_probes(client: testing.TestClient, service: FakeService, node: FakeNode) -> None:
    service.held[130] = "reporting"
    assert client.simulate_get("/function/runs/130", headers=AUTH).json == {"script_id": 130, "state": "reporting"}
    gone = client.simulate_get("/function/runs/131", headers=AUTH)
    assert gone.status_code == 404 and "131" in gone.json["error"]
    assert client.simulate_get("/function/runs/0", headers=AUTH).status_code == 404  # ids start at 1
    assert client.simulate_get("/ping/").text == "Pong"
    assert client.simulate_get("/_/health").status_code == 200
    assert client.simulate_get("/health").json == {"status": "ok"}
    assert client.simulate_get("/ready").json["slots"] == {"free": 1}
    node.healthy = False  # the probes need no token, and say 503 with the reason
    assert (client.simulate_get("/health").status_code, client.simulate_get("/health").json) \
        == (503, {"status": "unhealthy"})
    assert (client.simulate_get("/ready").status_code, client.simulate_get("/ready").json) \
        == (503, {"error": "disk full"})
