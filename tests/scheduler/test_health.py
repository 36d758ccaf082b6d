"""GET /health: 200 while the database answers, 503 with the reason while it does not, and back again."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from falcon import testing

from scheduler import texts
from tests.scheduler.conftest import AUTH, BASE, RunningServer, env_for
from tests.support.mariadb import MariaDBServer, start_server


def test_health_says_ok_without_auth(client: testing.TestClient) -> None:
    result = client.simulate_get("/health")
    assert (result.status_code, result.json) == (200, {"status": texts.HEALTH_OK, "database": texts.HEALTH_OK})


@pytest.fixture
def own_mariadb() -> Iterator[MariaDBServer]:
    """A MariaDB of this test's own: it is stopped and started again, which the shared one must never be."""
    server = start_server(("--innodb-buffer-pool-size=32M",))
    try:
        yield server
    finally:
        server.stop()


def _health(url: str) -> tuple[int, dict[str, str]]:
    response = requests.get(f"{url}/health", timeout=30)
    return response.status_code, response.json()


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_health_follows_mariadb_down_and_up_and_the_api_recovers(
    own_mariadb: MariaDBServer, tmp_path: Path, serve: Callable[[dict[str, str]], RunningServer]
) -> None:
    server = serve(env_for(own_mariadb.settings, PYTHON_SCHEDULER_WORKERS="1"))
    assert _health(server.url) == (200, {"status": "ok", "database": "ok"})
    body = {"dtable_uuid": BASE, "script_name": "a.py", "owner": "alice@auth.local"}
    assert requests.post(f"{server.url}/run-script/", json=body, headers=AUTH, timeout=30).status_code == 200

    own_mariadb.shutdown()
    code, answer = _health(server.url)
    assert code == 503 and answer["status"] == texts.HEALTH_UNHEALTHY, answer
    assert "2003" in answer["database"] or "2013" in answer["database"] or "gone away" in answer["database"]
    assert own_mariadb.settings.password not in answer["database"]

    own_mariadb.start_again()
    _wait(lambda: _health(server.url)[0] == 200, 60, "/health to recover")
    # Every worker thread's connection was broken; the API must not keep failing on stale ones.
    for _ in range(20):
        response = requests.post(f"{server.url}/run-script/", json=body, headers=AUTH, timeout=30)
        assert response.status_code == 200, response.text
