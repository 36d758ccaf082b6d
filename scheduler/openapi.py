"""The scheduler's API as an OpenAPI 3.1 document, served at GET /openapi.json.

Kept next to the code it describes: request bodies reuse the resources' own JSON schemas (what the server
validates is what the document says), and every answer a route can give is listed, in the body upstream's
scheduler gave (plain text for most errors, JSON on the /admin/ routes and the callbacks). The SeaTable routes
are described as SeaTable calls them (shared/reference/seatable-contract.md): trailing slashes, `Token` auth,
upstream's parameter names (`org_by`, sic).
"""

from __future__ import annotations

import copy
from typing import Any

from pipeline_contract import schemas as contract
from scheduler import outcomes, texts
from scheduler.resources.common import MAX_ID, MAX_PER_PAGE
from scheduler.resources.runs import RunDraftScript, RunScript

HEX = "[0-9a-fA-F]"
UUID = {"type": "string", "pattern": f"^{HEX}{{8}}-?{HEX}{{4}}-?{HEX}{{4}}-?{HEX}{{4}}-?{HEX}{{12}}$"}
MONTH = {"type": "string", "pattern": "^[1-9][0-9]{3}-(0[1-9]|1[0-2])$", "examples": ["2026-11"]}
RUN_ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
PAGE = {"type": "integer", "minimum": 1, "maximum": 100000}
NAME_IN_PATH = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^/]+$"}
TIME_BOUND = {
    "type": "string",
    "anyOf": [{"format": "date"}, {"format": "date-time"}],
    "description": "A date (an `end` date covers its whole day) or an ISO 8601 date and time; with an offset it is "
    "converted to the scheduler's zone.",
}


def _text(*examples: str) -> dict[str, Any]:
    named = {f"e{i}": {"value": example} for i, example in enumerate(examples)}
    return {"text/html": {"schema": {"type": "string"}, "examples": named}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _answer(description: str, content: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, **extra}
    if content is not None:
        answer["content"] = content
    return answer


FALCON_ERROR = {"type": "object", "properties": {"title": {"type": "string"}, "description": {"type": "string"}},
                "required": ["title"]}
ADMIN_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
HEALTH = {"type": "object", "required": ["status", "database"],
          "properties": {"status": {"enum": [texts.HEALTH_OK, texts.HEALTH_UNHEALTHY]}, "database": {"type": "string"}}}
ERROR_MSG = {"type": "object", "properties": {"error_msg": {"type": "string"}}, "required": ["error_msg"]}
CALLBACK: list[dict[str, list[str]]] = [{"callback": []}]

FORBIDDEN = _answer("The token is missing or wrong.", _text(texts.FORBIDDEN))
FORBIDDEN_SHORT = _answer("The token is missing or wrong.", _text(texts.FORBIDDEN_SHORT))
TOO_LARGE = _answer("The body is larger than PYTHON_SCHEDULER_MAX_BODY_BYTES.", _text(texts.BODY_TOO_LARGE))
NO_ROUTE = _answer("The path matches no route (e.g. a path parameter holding a slash).", _json(FALCON_ERROR))

SCRIPT_LOG_SUMMARY: dict[str, Any] = {
    "type": "object",
    "required": ["id", "dtable_uuid", "script_name", "started_at", "state"],
    "properties": {
        "id": {"type": "integer"},
        "dtable_uuid": {"type": "string"},
        "owner": {"type": ["string", "null"]},
        "org_id": {"type": ["integer", "null"]},
        "script_name": {"type": "string"},
        "started_at": {"type": "string", "description": 'ISO 8601 with offset; "" while the run has not started'},
        "finished_at": {"type": ["string", "null"]},
        "success": {"type": ["boolean", "null"]},
        "return_code": {"type": ["integer", "null"]},
        "operate_from": {"type": ["string", "null"]},
        "state": {"type": ["string", "null"], "enum": ["pending", "running", "finished", None]},
        "created_at": {"type": ["string", "null"]},
    },
}
SCRIPT_LOG = copy.deepcopy(SCRIPT_LOG_SUMMARY)
SCRIPT_LOG["properties"]["context_data"] = {"description": "as SeaTable sent it"}
SCRIPT_LOG["properties"]["output"] = {"type": ["string", "null"]}
MONTHLY_ROW = {
    "type": "object",
    "properties": {
        "username": {"type": "string"},
        "org_id": {"type": "integer"},
        "base_uuid": {"type": "string"},
        "total_run_count": {"type": "integer"},
        "total_run_time": {"type": "number"},
    },
}
GROUPED_ROW = {
    "type": "object",
    "properties": {
        **{
            name: {"type": "integer"}
            for name in ("number_of_runs", "triggered_manually", "triggered_by_automation_rule", "successful_runs",
                         "unsuccessful_runs")
        },
        "total_run_time": {"type": "number"},
        "base_uuid": {"type": "string"},
        "date": {"type": "string"},
    },
}


def _query(name: str, schema: dict[str, Any], description: str = "", required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def _path(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": _json(schema)}


def _seatable_body(schema: dict[str, Any]) -> dict[str, Any]:
    """A resource's request schema, with the uuid's exact form (the resource checks it after the schema)."""
    described = copy.deepcopy(schema)
    described["properties"]["dtable_uuid"] = UUID
    return described


TOKEN: list[dict[str, list[str]]] = [{"token": []}]


def _operations() -> dict[str, dict[str, Any]]:
    run_ok = _answer("The run is queued.", _json({"type": "object", "required": ["script_id"],
                                                  "properties": {"script_id": {"type": "integer"}}}))
    run_bad = _answer(
        "Not a JSON object, a field of the wrong type, or the team's monthly run limit is reached.",
        _text(texts.BAD_REQUEST, texts.PARAMETERS_INVALID, texts.LIMIT_EXCEEDED),
    )
    monthly: dict[str, Any] = {
        "get": {
            "summary": "Runs and run time per {target} in a month (SeaTable's system admin statistics)",
            "security": TOKEN,
            "parameters": [
                _query("month", MONTH, "YYYY-MM; default: this month"),
                _query("order_by", {"type": "string", "enum": ["total_run_time", "total_run_count",
                                                               "-total_run_time", "-total_run_count"]},
                       '"-" sorts descending'),
                _query("direction", {"type": "string"}, 'exactly "desc" sorts descending (with order_by)'),
                _query("page", PAGE, "default 1; anything else falls back to it, as upstream"),
                _query("per_page", PAGE, f"default 25, at most {MAX_PER_PAGE}; anything else falls back"),
            ],
            "responses": {
                "200": _answer("One page of totals; count is 0 on a page past the end, as upstream.", _json({
                    "type": "object", "required": ["month", "count", "results"],
                    "properties": {"month": {"type": "string"}, "count": {"type": "integer"},
                                   "results": {"type": "array", "items": MONTHLY_ROW}}})),
                "400": _answer("month or order_by invalid.", _text(texts.MONTH_INVALID, texts.ORDER_BY_INVALID)),
                "403": FORBIDDEN,
            },
        }
    }
    admin_page = [
        _query("start", TIME_BOUND),
        _query("end", TIME_BOUND),
        _query("page", PAGE, "default 1"),
        _query("per_page", {"type": "integer", "minimum": 1, "maximum": 1000}, "default 100, at most 1000"),
    ]
    grouped: dict[str, Any] = {
        "get": {
            "summary": "Runs per {by} of an organisation (SeaTable's organisation admin statistics)",
            "security": TOKEN,
            "parameters": [_query("org_id", {"type": "integer", "minimum": -1, "maximum": MAX_ID}, required=True),
                           *admin_page],
            "responses": {
                "200": _answer("One page of rows.", _json({
                    "type": "object", "required": ["results", "total_count"],
                    "properties": {"results": {"type": "array", "items": GROUPED_ROW},
                                   "total_count": {"type": "integer"}}})),
                "400": _answer("A parameter is invalid.", _json(ADMIN_ERROR)),
                "403": FORBIDDEN,
            },
        }
    }
    by_day = copy.deepcopy(grouped)
    by_day["get"]["parameters"].insert(1, _query("base_uuid", UUID))
    callback_answers = {
        "200": _answer("Recorded, or already finished (nothing changes then).", _json(contract.CALLBACK_ACK.schema)),
        "400": _answer("Not a JSON object, or a field of the wrong type.",
                       _text(texts.BAD_REQUEST, texts.PARAMETERS_INVALID)),
        "403": _answer("No callback secret, or not this run's: refused for the run ({\"refused\": why}); sending "
                       "it again cannot help.", _json(contract.CALLBACK_REFUSED.schema)),
        "404": _answer("No run with this script_id.", _json(contract.CALLBACK_NOT_FOUND.schema)),
        "409": _answer("Not the run's next legal transition (a replay, a run never handed off, a result for a "
                       "finished run): refused for the run.", _json(contract.CALLBACK_REFUSED.schema)),
        "413": TOO_LARGE,
    }
    result_body = copy.deepcopy(contract.RESULT_CALLBACK.schema)
    result_body["properties"]["outcome"]["description"] = "What ended the run: " + ", ".join(outcomes.REPORTED)
    return {
        "/ping/": {"get": {"summary": "Liveness (no auth, no database)", "responses": {
            "200": _answer("Pong", _text(texts.PONG))}}},
        "/run-script/": {"post": {
            "summary": "Queue a run of a saved script (dtable-web's Run script button, automations, workflows)",
            "security": TOKEN, "requestBody": _body(_seatable_body(RunScript.SCHEMA)),
            "responses": {"200": run_ok, "400": run_bad, "403": FORBIDDEN, "413": TOO_LARGE}}},
        "/run-draft-script/": {"post": {
            "summary": "Queue a run of unsaved code from the script editor (upstream PR #95)",
            "security": TOKEN, "requestBody": _body(_seatable_body(RunDraftScript.SCHEMA)),
            "responses": {"200": run_ok, "400": run_bad, "403": FORBIDDEN, "413": TOO_LARGE}}},
        "/run-script/{script_id}/": {"get": {
            "summary": "One run, as dtable-web polls it until it is finished", "security": TOKEN,
            "parameters": [_path("script_id", RUN_ID), _query("dtable_uuid", UUID, required=True),
                           _query("script_name", {"type": "string", "minLength": 1}, required=True)],
            "responses": {
                "200": _answer("The run.", _json({"type": "object", "required": ["script"],
                                                  "properties": {"script": SCRIPT_LOG}})),
                "400": _answer("Missing parameters, or the run belongs to another base or script (as upstream).",
                               _text(texts.BAD_REQUEST, texts.PARAMETERS_INVALID)),
                "403": FORBIDDEN,
                "404": _answer("No such run, or no such route.", {**_text(texts.NOT_FOUND), **_json(FALCON_ERROR)}),
            }}},
        "/tasks/{dtable_uuid}/{script_name}/logs/": {"get": {
            "summary": "A script's runs in a base (dtable-web's run history)", "security": TOKEN,
            "parameters": [
                _path("dtable_uuid", UUID), _path("script_name", NAME_IN_PATH),
                _query("page", PAGE, "default 1; anything else falls back to it"),
                _query("per_page", PAGE, f"default 20, at most {MAX_PER_PAGE}; anything else falls back"),
                _query("org_by", {"type": "string", "enum": ["id", "-id"]}, "sic (upstream's name); default -id"),
            ],
            "responses": {
                "200": _answer("One page of runs, newest first by default.", _json({
                    "type": "object", "required": ["task_logs", "count"],
                    "properties": {"task_logs": {"type": "array", "items": SCRIPT_LOG},
                                   "count": {"type": "integer"}}})),
                "400": _answer("order_by invalid.", _text(texts.ORDER_BY_INVALID, texts.BAD_REQUEST)),
                "403": FORBIDDEN_SHORT,
                "404": NO_ROUTE,
            }}},
        "/tasks/{dtable_uuid}/{script_name}/logs/{log_id}/": {"get": {
            "summary": "One run of a script in a base", "security": TOKEN,
            "parameters": [_path("dtable_uuid", UUID), _path("script_name", NAME_IN_PATH), _path("log_id", RUN_ID)],
            "responses": {
                "200": _answer("The run.", _json({"type": "object", "required": ["task_log"],
                                                  "properties": {"task_log": SCRIPT_LOG}})),
                "403": FORBIDDEN_SHORT,
                "404": _answer("No such run of this script in this base.", _json({"anyOf": [ERROR_MSG, FALCON_ERROR]})),
            }}},
        "/scripts-running-count/": {"get": {
            "summary": "Runs of a user or an organisation in a month (the quota SeaTable checks)", "security": TOKEN,
            "description": "One of username or org_id is required.",
            "parameters": [_query("username", {"type": "string", "minLength": 1}),
                           _query("org_id", {"type": "integer", "minimum": 0, "maximum": MAX_ID}),
                           _query("month", MONTH, "YYYY-MM; default: this month")],
            "responses": {
                "200": _answer("The count.", _json({"type": "object", "required": ["count"],
                                                    "properties": {"count": {"type": "integer"}}})),
                "400": _answer("Neither username nor org_id, or a bad month.", _text(
                    texts.USERNAME_OR_ORG_INVALID, texts.ORG_ID_INVALID, texts.MONTH_INVALID)),
                "403": FORBIDDEN,
            }}},
        **{f"/admin/statistics/scripts-running/by-{t}/": _format_summary(monthly, target=t)
           for t in ("user", "org", "base")},
        "/admin/runs/": {"get": {
            "summary": "Runs across bases, newest first (SeaTable's admin run list)", "security": TOKEN,
            "parameters": [_query("org_id", {"type": "integer", "minimum": -1, "maximum": MAX_ID}),
                           _query("base_uuid", UUID), *admin_page],
            "responses": {
                "200": _answer("One page of runs (without context_data and output).", _json({
                    "type": "object", "required": ["runs", "total_count"],
                    "properties": {"runs": {"type": "array", "items": SCRIPT_LOG_SUMMARY},
                                   "total_count": {"type": "integer"}}})),
                "400": _answer("A parameter is invalid.", _json(ADMIN_ERROR)),
                "403": FORBIDDEN,
            }}},
        "/admin/statistics/by-base/": _format_summary(grouped, by="base"),
        "/admin/statistics/by-day/": _format_summary(by_day, by="day"),
        "/script-running-callback/": {"post": {
            "summary": "A sandbox (or upstream's starter) started the run", "security": CALLBACK,
            "requestBody": _body(contract.RUNNING_CALLBACK.schema), "responses": callback_answers}},
        "/script-result/": {"post": {
            "summary": "A sandbox (or upstream's starter) reports the run's result", "security": CALLBACK,
            "requestBody": _body(result_body), "responses": callback_answers}},
    }


def _format_summary(path_item: dict[str, Any], **values: str) -> dict[str, Any]:
    item = copy.deepcopy(path_item)
    item["get"]["summary"] = item["get"]["summary"].format(**values)
    return item


def _operator_routes() -> dict[str, dict[str, Any]]:
    forbidden_json = _answer("The credential is missing or wrong.", _json(FALCON_ERROR))
    unauthorized = _answer("The status page's password is missing or wrong.", _json(FALCON_ERROR),
                           headers={"WWW-Authenticate": {"schema": {"type": "string"}}})
    page_off = _answer("PYTHON_SCHEDULER_STATUS_TOKEN is empty: the page is off.", _json(FALCON_ERROR))
    return {
        "/metrics": {"get": {
            "summary": "Prometheus metrics of the scheduler (all its processes) and the queue", "security": [
                {"metrics": []}],
            "responses": {
                "200": _answer("Text exposition format (OpenMetrics when asked for).", {
                    "text/plain": {"schema": {"type": "string"}},
                    "application/openmetrics-text": {"schema": {"type": "string"}}}),
                "403": forbidden_json,
            }}},
        "/status/": {"get": {
            "summary": "The status page (HTML)", "security": [{"status": []}],
            "responses": {"200": _answer("The page.", {"text/html": {"schema": {"type": "string"}}}),
                          "401": unauthorized, "404": page_off}}},
        "/status/data": {"get": {
            "summary": "The numbers the status page draws", "security": [{"status": []}],
            "responses": {"200": _answer("Queue, nodes, runs per minute and hour by outcome, latency, scripts.",
                                         _json({"type": "object", "required": ["queue", "nodes", "minutes"]})),
                          "401": unauthorized, "404": page_off}}},
        "/health": {"get": {"summary": "Whether the scheduler can work: its database answers (no auth)", "responses": {
            "200": _answer("Healthy.", _json(HEALTH)),
            "503": _answer("The database did not answer a trivial query; `database` says why.", _json(HEALTH))}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {
            "200": _answer("OpenAPI 3.1", _json({"type": "object"}))}}},
    }


def _with_head(paths: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """HEAD on every GET route, as upstream's Flask answers it: the GET's answer without its body."""
    for item in paths.values():
        if "get" in item:
            head = copy.deepcopy(item["get"])
            head["summary"] = "HEAD: " + head["summary"]
            for answer in head["responses"].values():
                answer.pop("content", None)
            item["head"] = head
    return paths


def document() -> dict[str, Any]:
    paths = _with_head({**_operations(), **_operator_routes()})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SeaTable Python scheduler",
            "version": "1",
            "description": "Wire-compatible with upstream's python-pipeline scheduler. Errors are plain text as "
            "upstream's Flask sent them, except on the /admin/ routes and the callbacks. A route's path without "
            "its trailing slash answers 308 to the slashed path.",
        },
        "components": {
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "Authorization",
                          "description": "`Token <PYTHON_SCHEDULER_AUTH_TOKEN>` (or `Bearer <...>`, or one of "
                          "PYTHON_SCHEDULER_PREVIOUS_AUTH_TOKENS while it is rotated)"},
                "callback": {"type": "apiKey", "in": "header", "name": "Authorization",
                             "description": "`Token <the run's callback secret>`, issued with the hand-off; none "
                             "with PYTHON_SCHEDULER_ACCEPT_UNAUTHENTICATED_CALLBACKS=true"},
                "metrics": {"type": "http", "scheme": "bearer",
                            "description": "PYTHON_SCHEDULER_METRICS_TOKEN, else PYTHON_SCHEDULER_AUTH_TOKEN"},
                "status": {"type": "http", "scheme": "basic",
                           "description": "any user name, PYTHON_SCHEDULER_STATUS_TOKEN as the password"},
            }
        },
        "paths": paths,
    }
