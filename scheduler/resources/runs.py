"""Starting runs and asking for one run's state (called by dtable-web)."""

from __future__ import annotations

import dataclasses
from typing import Any

import falcon
import jsonschema

from scheduler import runs, texts
from scheduler.db import Store
from scheduler.limits import can_run
from scheduler.names import is_printable_text, is_script_name
from scheduler.resources.common import (
    ApiError,
    BodyBudget,
    Context,
    bad,
    param,
    parse_id,
    same_uuid,
    uuid_forms,
    validate,
)
from scheduler.seatable import SeaTable

_UUID = {"type": "string", "maxLength": 36}  # the exact form is checked by uuid_forms()
_NAME = {"type": "string", "minLength": 1, "maxLength": 255}
_ORG_ID = {"type": ["integer", "null"], "minimum": -1, "maximum": 2**31 - 1}
_LIMIT = {"type": ["integer", "null"], "minimum": -1}


class RunScript:
    """POST /run-script/: write a pending run and answer {"script_id"} at once.

    Body: dtable_uuid*, script_name*, owner*, org_id, context_data, scripts_running_limit (-1: no check;
    missing/0/null: ask SeaTable), operate_from ("manualy"). Upstream's old script_url/temp_api_token
    fields are accepted and ignored: the dispatcher fetches a fresh token just before the run.
    400 "Bad request" (not a JSON object), "Parameters invalid", "The number of runs exceeds the limit".
    """

    SCHEMA: dict[str, Any] = {
        "type": "object",
        "required": ["dtable_uuid", "script_name", "owner"],
        "properties": {
            "dtable_uuid": _UUID,
            "script_name": _NAME,
            "owner": _NAME,
            "org_id": _ORG_ID,
            "scripts_running_limit": _LIMIT,
            "operate_from": {"type": ["string", "null"], "maxLength": 50},
        },
    }
    DEFAULT_OPERATE_FROM = "manualy"  # sic, upstream's spelling, stored and compared as is
    validator = jsonschema.Draft202012Validator(SCHEMA)
    # The fields above plus context_data: the row that triggered the run (its cells, link and file lists).
    BUDGET = BodyBudget(bytes=2 * 1024 * 1024, values=20_000)

    def __init__(self, ctx: Context, store: Store, seatable: SeaTable) -> None:
        self.ctx = ctx
        self.store = store
        self.seatable = seatable

    def new_run(self, data: dict[str, Any]) -> runs.NewRun:
        return runs.NewRun(
            dtable_uuid=data["dtable_uuid"],
            script_name=data["script_name"],
            owner=data["owner"],
            org_id=data.get("org_id"),
            context_data=data.get("context_data"),
            operate_from=data.get("operate_from", self.DEFAULT_OPERATE_FROM),
        )

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.ctx.require_auth(req)
        data = self.ctx.read_json_object(req, self.BUDGET)
        validate(self.validator, data)
        if uuid_forms(data["dtable_uuid"]) is None or not valid_names(data):
            raise bad(texts.PARAMETERS_INVALID)
        limit = data.get("scripts_running_limit", -1)
        run = self.new_run(data)
        if limit != -1 and not can_run(self.store, self.seatable, run.owner, run.org_id, limit):
            raise bad(texts.LIMIT_EXCEEDED)
        resp.media = {"script_id": runs.create_run(self.store, run)}
        self.ctx.wake_dispatchers()


def valid_names(data: dict[str, Any]) -> bool:
    """The script name can be a URL segment; it, the owner and operate_from can be one log line."""
    operate_from = data.get("operate_from")
    return (is_script_name(data["script_name"]) and is_printable_text(data["owner"])
            and (operate_from is None or is_printable_text(operate_from)))


class RunDraftScript(RunScript):
    """POST /run-draft-script/ (upstream PR #95): run unsaved code from the script editor.

    Body as /run-script/ plus script_content* (may be empty, as in the PR) and temp_api_token*;
    operate_from defaults to "draft". The token cannot be fetched again later (the draft is not stored
    in SeaTable), so it is kept with the pending run and erased when the run starts or ends.
    """

    SCHEMA: dict[str, Any] = {
        "type": "object",
        "required": ["dtable_uuid", "script_name", "owner", "script_content", "temp_api_token"],
        "properties": {
            **RunScript.SCHEMA["properties"],
            "script_content": {"type": "string"},
            "temp_api_token": {"type": "string", "minLength": 1, "maxLength": 8192},
        },
    }
    DEFAULT_OPERATE_FROM = "draft"
    validator = jsonschema.Draft202012Validator(SCHEMA)
    BUDGET = BodyBudget(bytes=4 * 1024 * 1024, values=20_000)  # plus the editor's code, one string

    def new_run(self, data: dict[str, Any]) -> runs.NewRun:
        return dataclasses.replace(
            super().new_run(data), script_content=data["script_content"], draft_api_token=data["temp_api_token"]
        )


class RunStatus:
    """GET /run-script/{script_id}/?dtable_uuid=&script_name=: {"script": ScriptLog}.

    400 "Bad request" (id not a number, or the run belongs to another base/script), "Parameters invalid"
    (missing dtable_uuid/script_name); 404 "Not found".
    """

    def __init__(self, ctx: Context, store: Store) -> None:
        self.ctx = ctx
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response, script_id: str) -> None:
        self.ctx.require_auth(req)
        run_id = parse_id(script_id)
        if run_id is None:
            raise bad(texts.BAD_REQUEST)
        dtable_uuid, script_name = param(req, "dtable_uuid"), param(req, "script_name")
        if not dtable_uuid or not script_name:
            raise bad(texts.PARAMETERS_INVALID)
        if uuid_forms(dtable_uuid) is None:
            raise bad(texts.BAD_REQUEST)
        script = runs.get_run(self.store, run_id)
        if script is None:
            raise ApiError(404, texts.NOT_FOUND)
        if not same_uuid(script["dtable_uuid"], dtable_uuid) or script["script_name"] != script_name:
            raise bad(texts.BAD_REQUEST)
        resp.media = {"script": script}
