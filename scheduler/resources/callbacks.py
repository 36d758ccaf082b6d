"""Callbacks from the sandbox (or an upstream starter): the run started, the run ended.

Both require the shared token unless PYTHON_SCHEDULER_ACCEPT_UNAUTHENTICATED_CALLBACKS is set for old
starters. Both are idempotent: a duplicate or late call for a finished run is acknowledged and ignored.
"""

from __future__ import annotations

from typing import Any

import falcon
import jsonschema

from scheduler import outcomes, runs, texts
from scheduler.db import Store
from scheduler.metrics import ApiMetrics
from scheduler.resources.common import MAX_ID, ApiError, Context, validate

_SCRIPT_ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
_EPOCH = {"type": ["number", "null"], "minimum": 0, "maximum": 1e11}


_CAUSES = {403: "forbidden", 413: "too_large"}  # any other refusal of a body: "bad_request"


class _Callback:
    NAME = ""  # the metrics label

    def __init__(self, ctx: Context, store: Store, metrics: ApiMetrics | None = None) -> None:
        self.ctx = ctx
        self.store = store
        self.metrics = metrics

    def read(self, req: falcon.Request, validator: jsonschema.protocols.Validator) -> dict[str, Any]:
        try:
            if not self.ctx.accept_unauthenticated_callbacks:
                self.ctx.require_auth(req)
            data = self.ctx.read_json_object(req)
            validate(validator, data)
        except ApiError as error:
            self.count_error(_CAUSES.get(error.status, "bad_request"))
            raise
        return data

    def count_error(self, cause: str) -> None:
        if self.metrics is not None:
            self.metrics.callback_error(self.NAME, cause)

    def answer(self, resp: falcon.Response, outcome: runs.Outcome) -> None:
        if outcome is runs.Outcome.NOT_FOUND:
            self.count_error("unknown_run")
            raise ApiError(404, {"error_msg": texts.SCRIPT_NOT_FOUND_ERROR})
        resp.media = {"success": True}


class RunningCallback(_Callback):
    """POST /script-running-callback/ {script_id*, started_at (epoch seconds)}: {"success": true}; 404."""

    SCHEMA: dict[str, Any] = {
        "type": "object",
        "required": ["script_id"],
        "properties": {"script_id": _SCRIPT_ID, "started_at": _EPOCH},
    }
    validator = jsonschema.Draft202012Validator(SCHEMA)
    NAME = "running"

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        data = self.read(req, self.validator)
        started = data.get("started_at")
        started_at = self.store.clock.from_epoch(started) if started is not None else None
        waited = self.metrics.waited if self.metrics is not None else None
        self.answer(resp, runs.mark_running(self.store, data["script_id"], started_at, waited))


class ResultCallback(_Callback):
    """POST /script-result/ {script_id*, success, return_code, output, started_at, spend_time}.

    {"success": true} also for a run that already finished (nothing changes then); 404 unknown run.
    """

    SCHEMA: dict[str, Any] = {
        "type": "object",
        "required": ["script_id"],
        "properties": {
            "script_id": _SCRIPT_ID,
            "success": {"type": ["boolean", "null"]},
            "return_code": {"type": ["integer", "null"], "minimum": -(2**31), "maximum": MAX_ID},
            "output": {"type": ["string", "null"]},
            "started_at": _EPOCH,
            "spend_time": {"type": ["number", "null"], "minimum": 0, "maximum": 1e9},
            "lost": {"type": ["boolean", "null"]},  # the sandbox lost the run (its restart): not counted
            # what ended the run, as the sandbox observed it (scheduler/outcomes.py); unknown words: success/failed
            "outcome": {"type": ["string", "null"], "maxLength": 64},
        },
    }
    validator = jsonschema.Draft202012Validator(SCHEMA)
    NAME = "result"

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        data = self.read(req, self.validator)
        started = data.get("started_at")
        success = bool(data.get("success"))
        kind = outcomes.SANDBOX_LOST if data.get("lost") else outcomes.reported(data.get("outcome"), success)
        result = runs.RunResult(
            success=success,
            return_code=data.get("return_code"),
            output=data.get("output"),
            started_at=self.store.clock.from_epoch(started) if started is not None else None,
            spend_time=data.get("spend_time"),
            counted=not data.get("lost"),
            outcome=kind,
        )
        recorded = runs.record_result(self.store, data["script_id"], result)
        if recorded is runs.Outcome.APPLIED and self.metrics is not None:
            self.metrics.finished(kind, result.spend_time)
        self.answer(resp, recorded)
