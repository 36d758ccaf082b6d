"""POST /function/run-python: the upstream starter's path, accepting one run."""

from __future__ import annotations

from typing import Any

import falcon

from pipeline_contract import ContractError
from pipeline_contract.schemas import HANDOFF, SCRIPT_MAX_BYTES
from sandbox import texts
from sandbox.runs import Busy, Duplicate, RunRequest, RunService, Unavailable


def _no_nul(value: Any, where: str = "body") -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise falcon.HTTPBadRequest(description=f"NUL byte in {where}")
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_nul(key, where)
            _no_nul(item, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            _no_nul(item, where)


class RunStatus:
    """GET /function/runs/{script_id}: whether this node holds or has held a run.

    200 {"script_id", "state": "running"|"reporting"|"done"}: executing; result queued, not yet
    acknowledged; result acknowledged (a tombstone, kept PYTHON_SANDBOX_TOMBSTONE_SECS). 404 when
    the node has no record of the id: within the tombstone time, it was provably never accepted
    here, so the dispatcher may hand it out again.
    """

    def __init__(self, service: RunService) -> None:
        self.service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response, script_id: int) -> None:
        state = self.service.status(script_id)
        if state is None:
            raise falcon.HTTPNotFound(description=texts.NOT_HERE.format(script_id=script_id))
        resp.media = {"script_id": script_id, "state": state}


class RunPython:
    """Accept a run and answer at once; the result goes to the scheduler's callbacks.

    Idempotent by script_id. 202 {"accepted": true}; 409 {"error", "state"} the node holds or has
    held this id (the caller counts it as accepted; it never runs twice); 429 every slot busy
    (with Retry-After) and 503 {"error": reason} node unhealthy: not accepted, provably not
    started; 400/413 body refused; 403 bad token. `callback_secret` is the run's own credential for its
    callbacks, issued by the dispatcher; it is kept in the outbox (0600) and nowhere else.
    """

    SCHEMA = HANDOFF.schema  # the contract's (pipeline_contract): what the dispatcher sends

    def __init__(self, service: RunService) -> None:
        self.service = service

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = req.get_media()
        try:
            HANDOFF.check(body)
        except ContractError as exc:
            raise falcon.HTTPBadRequest(description=str(exc)) from None
        # NUL cannot be in an environment variable, a URL or a source file. The context reaches the script as JSON
        # on stdin, where an escaped NUL is harmless (a SeaTable cell may hold one); other fields are only logged.
        _no_nul({key: body[key] for key in ("script_url", "script_content", "env") if key in body})
        content = body.get("script_content")
        if content is not None and len(content.encode()) > SCRIPT_MAX_BYTES:
            raise falcon.HTTPBadRequest(description=f"script over {SCRIPT_MAX_BYTES} bytes")
        request = RunRequest(
            script_id=body["script_id"],
            env=body["env"],
            context_data=body.get("context_data"),
            script_content=content,
            script_url=body.get("script_url") if content is None else None,
            callback_secret=body["callback_secret"],
            script_name=body.get("script_name"),
            dtable_uuid=body.get("dtable_uuid"),
        )
        try:
            self.service.submit(request)
        except Duplicate as dup:
            resp.status = falcon.HTTP_409
            resp.media = {"error": texts.ALREADY_HERE.format(script_id=dup.script_id), "state": dup.state}
            return
        except Unavailable as exc:
            raise falcon.HTTPServiceUnavailable(description=str(exc)) from None
        except Busy:
            raise falcon.HTTPTooManyRequests(description=texts.SLOTS_BUSY, retry_after=1) from None
        resp.status = falcon.HTTP_202
        resp.media = {"accepted": True}
