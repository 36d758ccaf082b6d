"""dtable-web's "Run script" button as a client of the scheduler: POST /run-script/, then poll until finished.

The request is the one dtable-web/dtable-events send (`DTableWebAPI.run_script`): a JSON body with the dashed
base uuid, the script name, `context_data` as a JSON object, owner, org_id, scripts_running_limit,
operate_from and operator, authenticated with `Token <PYTHON_SCHEDULER_AUTH_TOKEN>`. The page then polls
`GET /run-script/<id>/?dtable_uuid=..&script_name=..` every 2 s until the run's state is `finished`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

FINISHED = "finished"


@dataclass(frozen=True)
class StateChange:
    """One observed change of a run's state, with the full ScriptLog the scheduler returned."""

    script_id: int
    state: str
    script: dict[str, Any]
    elapsed: float  # seconds since the button was clicked (or polling began)


class RunScriptError(Exception):
    """The scheduler answered with an error status (refused the run, or failed a status request)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"scheduler answered {status}: {body}")
        self.status = status
        self.body = body


class RunScriptTimeout(Exception):
    """The run was not finished within the deadline."""


OnChange = Callable[[StateChange], None]


class RunScriptButton:
    """Starts runs on a scheduler and follows them, reporting each state change to a callback."""

    def __init__(
        self,
        scheduler_url: str,
        auth_token: str,
        *,
        poll_interval: float = 2.0,
        request_timeout: float = 10.0,
        session: requests.Session | None = None,
    ) -> None:
        self.scheduler_url = scheduler_url.rstrip("/")
        self.poll_interval = poll_interval
        self.request_timeout = request_timeout
        self._headers = {"Authorization": f"Token {auth_token}"}
        self._session = session or requests.Session()

    def submit(
        self,
        dtable_uuid: str,
        script_name: str,
        *,
        owner: str,
        org_id: int = -1,
        context_data: dict[str, Any] | None = None,
        scripts_running_limit: int | None = -1,
        operate_from: str = "manualy",
        operator: str | None = None,
    ) -> int:
        """POST /run-script/ and return the `script_id`; RunScriptError if the scheduler refuses.

        `scripts_running_limit` -1 means unlimited; 0 or None makes the scheduler ask dtable-web for it.
        """
        body = {
            "dtable_uuid": str(uuid.UUID(dtable_uuid)),
            "script_name": script_name,
            "context_data": context_data,
            "owner": owner,
            "org_id": org_id,
            "scripts_running_limit": scripts_running_limit,
            "operate_from": operate_from,
            "operator": operator if operator is not None else owner,
        }
        response = self._session.post(f"{self.scheduler_url}/run-script/", json=body, headers=self._headers,
                                      timeout=self.request_timeout)
        if response.status_code != 200:
            raise RunScriptError(response.status_code, response.text)
        return int(response.json()["script_id"])

    def status(self, script_id: int, dtable_uuid: str, script_name: str) -> dict[str, Any]:
        """One GET /run-script/<id>/: the ScriptLog dict (`state`, `success`, `output`, ...)."""
        response = self._session.get(
            f"{self.scheduler_url}/run-script/{script_id}/",
            params={"dtable_uuid": str(uuid.UUID(dtable_uuid)), "script_name": script_name},
            headers=self._headers,
            timeout=self.request_timeout,
        )
        if response.status_code != 200:
            raise RunScriptError(response.status_code, response.text)
        script: dict[str, Any] = response.json()["script"]
        return script

    def wait(
        self,
        script_id: int,
        dtable_uuid: str,
        script_name: str,
        *,
        on_change: OnChange | None = None,
        deadline: float = 600.0,
        started: float | None = None,
    ) -> dict[str, Any]:
        """Poll every `poll_interval` s until `state` is finished; returns the final ScriptLog."""
        started = time.monotonic() if started is None else started
        last_state: str | None = None
        while True:
            script = self.status(script_id, dtable_uuid, script_name)
            state = str(script.get("state"))
            if state != last_state:
                last_state = state
                if on_change is not None:
                    on_change(StateChange(script_id, state, script, time.monotonic() - started))
            if state == FINISHED:
                return script
            if time.monotonic() - started + self.poll_interval > deadline:
                raise RunScriptTimeout(f"run {script_id} still {state} after {deadline:.0f} s")
            time.sleep(self.poll_interval)

    def run(
        self,
        dtable_uuid: str,
        script_name: str,
        *,
        owner: str,
        on_change: OnChange | None = None,
        deadline: float = 600.0,
        **submit_options: Any,
    ) -> dict[str, Any]:
        """Click and follow: submit, then wait; returns the final ScriptLog."""
        started = time.monotonic()
        script_id = self.submit(dtable_uuid, script_name, owner=owner, **submit_options)
        return self.wait(script_id, dtable_uuid, script_name, on_change=on_change, deadline=deadline,
                         started=started)
