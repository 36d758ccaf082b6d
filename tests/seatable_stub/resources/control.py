"""Control API under /_stub/ for tests and the demo: set state up, read what happened, move the clock.

No authentication; `ControlGuard` keeps it to loopback clients unless the config says otherwise.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import falcon
from falcon.media.validators.jsonschema import validate

from ..button import RunScriptError
from ..runs import RunTracker
from ..state import SeaTable, UnknownBase, UnknownTable

CONTROL_PREFIX = "/_stub/"


class ControlGuard:
    """Middleware: 403 for control requests that do not come from loopback."""

    def __init__(self, loopback_only: bool) -> None:
        self.loopback_only = loopback_only

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not self.loopback_only or not req.path.startswith(CONTROL_PREFIX):
            return
        try:
            loopback = ipaddress.ip_address(req.remote_addr or "").is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise falcon.HTTPForbidden(description="the stub's control API answers loopback clients only")


class _Control:
    def __init__(self, seatable: SeaTable) -> None:
        self.seatable = seatable

    def _base(self, dtable_uuid: str) -> Any:
        try:
            return self.seatable.base(dtable_uuid)
        except UnknownBase:
            raise falcon.HTTPNotFound(description=f"no base {dtable_uuid}") from None


class ResetResource(_Control):
    """POST /_stub/reset: forget everything (bases, limits, URLs, notifications) and reset the clock."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.seatable.reset()
        resp.media = {"success": True}


class BasesResource(_Control):
    """GET /_stub/bases -> {"bases"}; POST {uuid?, name?, use_api_gateway?, workspace_id?, tables?} -> 201."""

    SCHEMA = {
        "type": "object",
        "properties": {
            "uuid": {"type": "string"},
            "name": {"type": "string"},
            "use_api_gateway": {"type": "boolean"},
            "workspace_id": {"type": "integer"},
            "tables": {"type": "array", "items": {"type": "string"}},
        },
        "additionalProperties": False,
    }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"bases": [base.as_dict() for base in self.seatable.all_bases()]}

    @validate(SCHEMA)
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = req.get_media()
        try:
            base = self.seatable.add_base(
                body.get("uuid"),
                name=body.get("name", "Stub Base"),
                use_api_gateway=body.get("use_api_gateway", True),
                workspace_id=body.get("workspace_id", 1),
                tables=body.get("tables", ["Table1"]),
            )
        except UnknownBase:
            raise falcon.HTTPBadRequest(description="uuid is not a UUID") from None
        resp.status = falcon.HTTP_201
        resp.media = base.as_dict()


class BaseResource(_Control):
    """GET /_stub/bases/{uuid} -> the base with its scripts and every table's rows."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str) -> None:
        resp.media = self._base(dtable_uuid).as_dict()


class ScriptsResource(_Control):
    """POST /_stub/bases/{uuid}/scripts {"name", "content"} -> 201 (replaces a script of the same name)."""

    SCHEMA = {
        "type": "object",
        "properties": {"name": {"type": "string", "minLength": 1}, "content": {"type": "string"}},
        "required": ["name", "content"],
        "additionalProperties": False,
    }

    @validate(SCHEMA)
    def on_post(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str) -> None:
        body = req.get_media()
        self._base(dtable_uuid)
        self.seatable.add_script(dtable_uuid, body["name"], body["content"])
        resp.status = falcon.HTTP_201
        resp.media = {"name": body["name"]}


class TablesResource(_Control):
    """POST /_stub/bases/{uuid}/tables {"name"} -> 201 {"name", "_id"}."""

    SCHEMA = {
        "type": "object",
        "properties": {"name": {"type": "string", "minLength": 1}},
        "required": ["name"],
        "additionalProperties": False,
    }

    @validate(SCHEMA)
    def on_post(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str) -> None:
        self._base(dtable_uuid)
        table = self.seatable.add_table(dtable_uuid, req.get_media()["name"])
        resp.status = falcon.HTTP_201
        resp.media = {"name": table.name, "_id": table.table_id}


class TableRowsResource(_Control):
    """GET /_stub/bases/{uuid}/tables/{table}/rows -> {"rows"}; POST {"rows": [...]} seeds rows -> 201."""

    SCHEMA = {
        "type": "object",
        "properties": {"rows": {"type": "array", "items": {"type": "object"}}},
        "required": ["rows"],
        "additionalProperties": False,
    }

    def on_get(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str, table: str) -> None:
        self._base(dtable_uuid)
        try:
            resp.media = {"rows": self.seatable.rows(dtable_uuid, table)}
        except UnknownTable:
            raise falcon.HTTPNotFound(description=f"no table {table}") from None

    @validate(SCHEMA)
    def on_post(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str, table: str) -> None:
        self._base(dtable_uuid)
        try:
            rows = self.seatable.add_rows(dtable_uuid, table, req.get_media()["rows"])
        except UnknownTable:
            raise falcon.HTTPNotFound(description=f"no table {table}") from None
        resp.status = falcon.HTTP_201
        resp.media = {"rows": rows}


class CallsResource(_Control):
    """GET /_stub/bases/{uuid}/calls -> {"calls": [{"api", "operation", "table"}]}: base API requests seen."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str) -> None:
        self._base(dtable_uuid)
        calls = self.seatable.calls(dtable_uuid)
        resp.media = {"calls": [{"api": c.api, "operation": c.operation, "table": c.table} for c in calls]}


class LimitsResource(_Control):
    """PUT /_stub/scripts-running-limits {"limit", "username"? | "org_id"?} (neither: default); GET all."""

    SCHEMA = {
        "type": "object",
        "properties": {
            "limit": {"type": "integer"},
            "username": {"type": "string"},
            "org_id": {"type": "integer"},
        },
        "required": ["limit"],
        "additionalProperties": False,
    }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {
            "default": self.seatable.default_scripts_running_limit,
            "users": dict(self.seatable.user_limits),
            "orgs": {str(org): limit for org, limit in self.seatable.org_limits.items()},
        }

    @validate(SCHEMA)
    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = req.get_media()
        self.seatable.set_scripts_running_limit(body["limit"], username=body.get("username"),
                                                org_id=body.get("org_id"))
        self.on_get(req, resp)


class NotificationsResource(_Control):
    """GET /_stub/notifications -> {"notifications": [{"org_ids", "owners", "received_at"}]}."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"notifications": [n.as_dict() for n in self.seatable.notifications]}


class ScriptUrlsResource(_Control):
    """GET /_stub/script-urls[?dtable_uuid=&script_name=] -> {"script_urls": [{url, ..., fetch_count}]}."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            urls = self.seatable.script_urls(req.get_param("dtable_uuid"), req.get_param("script_name"))
        except UnknownBase:
            raise falcon.HTTPBadRequest(description="dtable_uuid is not a UUID") from None
        resp.media = {"script_urls": [url.as_dict() for url in urls]}


class ClockResource(_Control):
    """GET /_stub/clock -> {"now", "offset"}; POST {"advance": s} | {"set": epoch} | {"reset": true}."""

    SCHEMA = {
        "type": "object",
        "properties": {"advance": {"type": "number"}, "set": {"type": "number"}, "reset": {"const": True}},
        "minProperties": 1,
        "maxProperties": 1,
        "additionalProperties": False,
    }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"now": self.seatable.clock.now(), "offset": self.seatable.clock.offset}

    @validate(SCHEMA)
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = req.get_media()
        if "advance" in body:
            self.seatable.clock.advance(body["advance"])
        elif "set" in body:
            self.seatable.clock.set(body["set"])
        else:
            self.seatable.clock.reset()
        self.on_get(req, resp)


class SettingsResource(_Control):
    """GET/PUT /_stub/settings {"temp_api_token_ttl"?, "access_token_ttl"?}: seconds, for new tokens."""

    SCHEMA = {
        "type": "object",
        "properties": {"temp_api_token_ttl": {"type": "integer"}, "access_token_ttl": {"type": "integer"}},
        "additionalProperties": False,
    }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {
            "temp_api_token_ttl": self.seatable.temp_api_token_ttl,
            "access_token_ttl": self.seatable.access_token_ttl,
        }

    @validate(SCHEMA)
    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = req.get_media()
        self.seatable.temp_api_token_ttl = body.get("temp_api_token_ttl", self.seatable.temp_api_token_ttl)
        self.seatable.access_token_ttl = body.get("access_token_ttl", self.seatable.access_token_ttl)
        self.on_get(req, resp)


class RunsResource:
    """POST /_stub/runs {dtable_uuid, script_name, owner, org_id?, context_data?, scripts_running_limit?,
    operate_from?} clicks "Run script" -> 201 {run}; 409 {"scheduler_status", "scheduler_body"} if the
    scheduler refuses; 502 if unreachable; 503 without --scheduler-url. GET /_stub/runs -> {"runs": [...]}.
    """

    SCHEMA = {
        "type": "object",
        "properties": {
            "dtable_uuid": {"type": "string"},
            "script_name": {"type": "string"},
            "owner": {"type": "string"},
            "org_id": {"type": "integer"},
            "context_data": {"type": ["object", "null"]},
            "scripts_running_limit": {"type": ["integer", "null"]},
            "operate_from": {"type": "string"},
            "operator": {"type": "string"},
        },
        "required": ["dtable_uuid", "script_name", "owner"],
        "additionalProperties": False,
    }

    def __init__(self, tracker: RunTracker | None) -> None:
        self.tracker = tracker

    def _tracker(self) -> RunTracker:
        if self.tracker is None:
            raise falcon.HTTPServiceUnavailable(description="the stub was started without --scheduler-url")
        return self.tracker

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"runs": self._tracker().all()}

    @validate(SCHEMA)
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = dict(req.get_media())
        tracker = self._tracker()
        try:
            run = tracker.start(body.pop("dtable_uuid"), body.pop("script_name"), **body)
        except RunScriptError as exc:
            resp.status = falcon.HTTP_409
            resp.media = {"error": "the scheduler refused the run", "scheduler_status": exc.status,
                          "scheduler_body": exc.body}
            return
        except ValueError:
            raise falcon.HTTPBadRequest(description="dtable_uuid is not a UUID") from None
        except OSError as exc:
            raise falcon.HTTPBadGateway(description=f"scheduler unreachable: {exc}") from None
        resp.status = falcon.HTTP_201
        resp.media = run.as_dict()


class RunResource:
    """GET /_stub/runs/{script_id} -> {script_id, states: [{state, elapsed}], script, error, done}."""

    def __init__(self, tracker: RunTracker | None) -> None:
        self.tracker = tracker

    def on_get(self, req: falcon.Request, resp: falcon.Response, script_id: int) -> None:
        run = self.tracker.get(script_id) if self.tracker is not None else None
        if run is None:
            raise falcon.HTTPNotFound(description=f"no run {script_id}")
        resp.media = run
