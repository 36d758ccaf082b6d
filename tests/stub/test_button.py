"""The "Run script" button client against a fake scheduler, and the stub following runs via /_stub/runs."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from tests.seatable_stub import RunScriptButton, RunScriptError, RunScriptTimeout, StateChange, StubServer

from .fake_scheduler import TOKEN, FakeScheduler

UUID = "5c264e76-0e5a-448a-9f34-580b551364ca"


def test_click_sends_what_dtable_web_sends_and_reports_each_state_change() -> None:
    changes: list[StateChange] = []
    with FakeScheduler() as scheduler:
        button = RunScriptButton(scheduler.url, TOKEN, poll_interval=0.01)
        final = button.run(
            UUID.replace("-", ""),
            "hello.py",
            owner="alice@auth.local",
            org_id=7,
            context_data={"table": "Table1", "row": {"_id": "r1"}},
            on_change=changes.append,
        )

    assert scheduler.submissions == [
        {
            "dtable_uuid": UUID,
            "script_name": "hello.py",
            "context_data": {"table": "Table1", "row": {"_id": "r1"}},
            "owner": "alice@auth.local",
            "org_id": 7,
            "scripts_running_limit": -1,
            "operate_from": "manualy",
            "operator": "alice@auth.local",
        }
    ]
    assert scheduler.auth_headers == [f"Token {TOKEN}"]
    assert [c.state for c in changes] == ["pending", "running", "finished"]
    assert all(c.script_id == 1 for c in changes)
    assert [c.elapsed for c in changes] == sorted(c.elapsed for c in changes)
    assert final["state"] == "finished" and final["output"] == "run 1\n"
    assert len(scheduler.polls) == 5
    assert scheduler.polls[0] == {"script_id": 1, "dtable_uuid": UUID, "script_name": "hello.py"}


def test_polls_at_the_configured_interval() -> None:
    with FakeScheduler(states=("pending", "pending", "finished")) as scheduler:
        button = RunScriptButton(scheduler.url, TOKEN, poll_interval=0.2)
        started = time.monotonic()
        button.run(UUID, "hello.py", owner="a")
        elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 2.0


def test_default_interval_is_two_seconds() -> None:
    assert RunScriptButton("http://127.0.0.1:1", TOKEN).poll_interval == 2.0


def test_refused_run_raises_with_status_and_text() -> None:
    with FakeScheduler(refuse=(400, "The number of runs exceeds the limit")) as scheduler:
        button = RunScriptButton(scheduler.url, TOKEN, poll_interval=0.01)
        with pytest.raises(RunScriptError) as refused:
            button.submit(UUID, "hello.py", owner="a", scripts_running_limit=None)
    assert (refused.value.status, refused.value.body) == (400, "The number of runs exceeds the limit")


def test_wrong_token_is_refused() -> None:
    with FakeScheduler() as scheduler:
        with pytest.raises(RunScriptError) as refused:
            RunScriptButton(scheduler.url, "wrong").submit(UUID, "hello.py", owner="a")
    assert refused.value.status == 403


def test_status_errors_and_timeouts_surface() -> None:
    with FakeScheduler(states=("running",)) as scheduler:
        button = RunScriptButton(scheduler.url, TOKEN, poll_interval=0.01)
        with pytest.raises(RunScriptError) as missing:
            button.status(99, UUID, "hello.py")
        assert missing.value.status == 404
        script_id = button.submit(UUID, "hello.py", owner="a")
        with pytest.raises(RunScriptTimeout):
            button.wait(script_id, UUID, "hello.py", deadline=0.2)


def wait_done(stub: StubServer, script_id: int) -> dict[str, Any]:
    for _ in range(200):
        run: dict[str, Any] = requests.get(f"{stub.url}/_stub/runs/{script_id}", timeout=5).json()
        if run["done"]:
            return run
        time.sleep(0.02)
    raise AssertionError("run not done")


def test_stub_clicks_the_button_and_follows_the_run() -> None:
    with (
        FakeScheduler() as scheduler,
        StubServer(scheduler_url=scheduler.url, scheduler_token=TOKEN, poll_interval=0.01) as stub,
    ):
        response = requests.post(
            f"{stub.url}/_stub/runs",
            json={
                "dtable_uuid": UUID,
                "script_name": "hello.py",
                "owner": "alice@auth.local",
                "org_id": 3,
                "context_data": {"row": {"_id": "r"}},
                "scripts_running_limit": 0,
                "operate_from": "automation-rule",
            },
            timeout=5,
        )
        assert response.status_code == 201
        script_id = response.json()["script_id"]
        run = wait_done(stub, script_id)
        listed = requests.get(f"{stub.url}/_stub/runs", timeout=5).json()["runs"]

    assert [s["state"] for s in run["states"]] == ["pending", "running", "finished"]
    assert run["script"]["output"] == "run 1\n" and run["error"] is None
    assert [r["script_id"] for r in listed] == [script_id]
    submitted = scheduler.submissions[0]
    assert (submitted["org_id"], submitted["scripts_running_limit"], submitted["operate_from"]) == (
        3,
        0,
        "automation-rule",
    )


def test_stub_reports_a_refused_run_as_409() -> None:
    with (
        FakeScheduler(refuse=(400, "Parameters invalid")) as scheduler,
        StubServer(scheduler_url=scheduler.url, scheduler_token=TOKEN) as stub,
    ):
        response = requests.post(
            f"{stub.url}/_stub/runs",
            json={"dtable_uuid": UUID, "script_name": "a.py", "owner": "a"},
            timeout=5,
        )
    assert response.status_code == 409
    assert response.json()["scheduler_status"] == 400
    assert response.json()["scheduler_body"] == "Parameters invalid"


def test_stub_runs_errors() -> None:
    with StubServer() as plain:
        assert requests.get(f"{plain.url}/_stub/runs", timeout=5).status_code == 503
        assert requests.get(f"{plain.url}/_stub/runs/1", timeout=5).status_code == 404
    with StubServer(scheduler_url="http://127.0.0.1:9", scheduler_token=TOKEN) as unreachable:
        body = {"dtable_uuid": UUID, "script_name": "a.py", "owner": "a"}
        assert requests.post(f"{unreachable.url}/_stub/runs", json=body, timeout=15).status_code == 502
        bad_uuid = {**body, "dtable_uuid": "nope"}
        assert requests.post(f"{unreachable.url}/_stub/runs", json=bad_uuid, timeout=5).status_code == 400
        assert (
            requests.post(f"{unreachable.url}/_stub/runs", json={"owner": "a"}, timeout=5).status_code == 400
        )
