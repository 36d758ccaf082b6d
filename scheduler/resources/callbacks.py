"""Callbacks from the sandbox (or an upstream starter): the run started, the run ended.

Both need the run's own callback secret (issued at hand-off, scheduler.callback_auth), unless
PYTHON_SCHEDULER_ACCEPT_UNAUTHENTICATED_CALLBACKS is set for old starters; the state rules hold either way:
running once after the hand-off, a result once. What the rules refuse is answered 403/409 with
{"error_msg", "refused"}, the sandbox's sign that sending again cannot help.
A body that names a valid run but is otherwise malformed is salvaged, never refused: a refused result is a
lost result (the sandbox would have to give it up), so it is stored as a failed run saying what was wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import falcon

from pipeline_contract import Message
from pipeline_contract.schemas import RESULT_CALLBACK, RUN_ID, RUNNING_CALLBACK
from scheduler import outcomes, runs, texts
from scheduler.auth import presented
from scheduler.callback_auth import Credential, Refused
from scheduler.db import Store
from scheduler.metrics import ApiMetrics
from scheduler.resources.common import ApiError, BodyBudget, Context, validate

# Without a valid script_id there is no run to store anything on (every other field is salvaged).
_NAMES_A_RUN = Message("callback head", {"type": "object", "required": ["script_id"],
                                        "properties": {"script_id": RUN_ID}})


def problems(message: Message, data: dict[str, Any]) -> list[str]:
    """What is wrong with the body, one short line per field ("success: must be of type boolean or null")."""
    return message.problems(data)


_CAUSES = {403: "forbidden", 413: "too_large"}  # any other refusal of a body: "bad_request"


class _Callback:
    NAME = ""  # the metrics label
    BUDGET = BodyBudget(bytes=64 * 1024, values=64)

    def __init__(self, ctx: Context, store: Store, metrics: ApiMetrics | None = None) -> None:
        self.ctx = ctx
        self.store = store
        self.metrics = metrics

    def read(self, req: falcon.Request) -> tuple[dict[str, Any], Credential]:
        """The body, which must at least name a run (400 otherwise), and what the caller presented."""
        try:
            header = req.get_header("Authorization")
            secret = presented(header)
            allowed = self.ctx.accept_unauthenticated_callbacks
            if allowed and self.ctx.auth.accepts(header):
                secret = None  # an old starter sending SeaTable's token: as unauthenticated, behind the switch
            elif secret is None and not allowed:
                raise ApiError(403, {"error_msg": texts.CALLBACK_SECRET_MISSING, "refused": "secret"})
            data = self.ctx.read_json_object(req, self.BUDGET, salvage_text=True)
            validate(_NAMES_A_RUN.validator, data)
        except ApiError as error:
            self.count_error(_CAUSES.get(error.status, "bad_request"))
            raise
        return data, Credential(secret, allowed)

    def count_error(self, cause: str) -> None:
        if self.metrics is not None:
            self.metrics.callback_error(self.NAME, cause)

    def answer(self, resp: falcon.Response, apply: Callable[[], runs.Outcome]) -> runs.Outcome:
        """Apply the callback; a refusal for its run (wrong secret, replay, wrong state) is a 403/409 JSON error."""
        try:
            outcome = apply()
        except Refused as refused:
            self.count_error(_CAUSES.get(refused.status, "refused"))
            raise ApiError(refused.status, {"error_msg": refused.message, "refused": refused.reason}) from None
        if outcome is runs.Outcome.NOT_FOUND:
            self.count_error("unknown_run")
            raise ApiError(404, {"error_msg": texts.SCRIPT_NOT_FOUND_ERROR})
        resp.media = {"success": True}
        return outcome


def _valid(message: Message, data: dict[str, Any], name: str) -> Any:
    """The field's value when it alone is valid, else None."""
    value = data.get(name)
    return value if value is not None and message.is_valid({"script_id": 1, name: value}) else None


class RunningCallback(_Callback):
    """POST /script-running-callback/ {script_id*, started_at (epoch seconds)}: {"success": true}; 404; 403/409.

    A malformed or unbelievable started_at is replaced by the time of arrival.
    """

    SCHEMA = RUNNING_CALLBACK.schema  # the contract's (pipeline_contract): what the sandbox sends
    validator = RUNNING_CALLBACK
    NAME = "running"

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        data, credential = self.read(req)
        started = _valid(self.validator, data, "started_at")
        started_at = self.store.clock.from_epoch(started) if started is not None else None
        waited = self.metrics.waited if self.metrics is not None else None
        self.answer(resp, lambda: runs.mark_running(self.store, data["script_id"], started_at, waited, credential))


class ResultCallback(_Callback):
    """POST /script-result/ {script_id*, success, return_code, output, started_at, spend_time}.

    404 unknown run; 409 {"refused"} for a run that already finished or was never handed off.
    A result with invalid fields (or times that cannot be true) is stored as failed: the valid fields are
    kept, and the output says which fields were wrong.
    """

    # The output (up to PYTHON_RUNNER_OUTPUT_LIMIT characters, escaped) is one string: bytes up to the
    # scheduler's PYTHON_SCHEDULER_MAX_BODY_BYTES, few values.
    BUDGET = BodyBudget(bytes=2**62, values=256)

    SCHEMA = RESULT_CALLBACK.schema  # the contract's (pipeline_contract): what the sandbox sends
    validator = RESULT_CALLBACK
    NAME = "result"

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        data, credential = self.read(req)
        result = self.result(data)
        waited = self.metrics.waited if self.metrics is not None else None
        recorded = self.answer(resp, lambda: runs.record_result(self.store, data["script_id"], result, credential,
                                                                waited))
        if recorded is runs.Outcome.APPLIED:
            self.ctx.wake_dispatchers()  # the run's slot on its node is free again
            if self.metrics is not None:
                self.metrics.finished(result.kind, result.spend_time)

    def result(self, data: dict[str, Any]) -> runs.RunResult:
        wrong = problems(self.validator, data)
        if wrong:
            self.count_error("malformed")  # stored as a failed run all the same
        started = _valid(self.validator, data, "started_at")
        output = _valid(self.validator, data, "output")
        if wrong:
            notice = texts.RESULT_MALFORMED.format(problems="; ".join(wrong))
            output = f"{output}\n{notice}" if output else notice
        success = bool(data.get("success")) and not wrong
        lost = _valid(self.validator, data, "lost") is True
        kind = outcomes.SANDBOX_LOST if lost else outcomes.reported(_valid(self.validator, data, "outcome"), success)
        return runs.RunResult(
            success=success,
            return_code=_valid(self.validator, data, "return_code"),
            output=output,
            started_at=self.store.clock.from_epoch(started) if started is not None else None,
            spend_time=_valid(self.validator, data, "spend_time"),
            counted=not lost,
            outcome=kind,
        )
