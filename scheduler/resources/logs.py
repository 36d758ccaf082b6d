"""A script's run history, as dtable-web shows it under "logs"."""

from __future__ import annotations

import falcon

from scheduler import runs, texts
from scheduler.db import Store
from scheduler.resources.common import (
    MAX_PER_PAGE,
    ApiError,
    Context,
    bad,
    lenient_page_param,
    param,
    parse_id,
    same_uuid,
    uuid_forms,
)

_NOT_FOUND = ApiError(404, {"error_msg": texts.SCRIPT_LOG_NOT_FOUND})


class TaskLogs:
    """GET /tasks/{dtable_uuid}/{script_name}/logs/?page=1&per_page=20&org_by=-id (sic: org_by).

    {"task_logs": [ScriptLog], "count": n}; 400 "order_by invalid." or a bad uuid (upstream: 500). A bad
    page/per_page falls back to 1/20 as upstream (where it answered 500); per_page above 1000 is cut to 1000.
    """

    def __init__(self, ctx: Context, store: Store) -> None:
        self.ctx = ctx
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str, script_name: str) -> None:
        self.ctx.require_auth(req, texts.FORBIDDEN_SHORT)
        page = lenient_page_param(req, "page", 1)
        per_page = lenient_page_param(req, "per_page", 20, MAX_PER_PAGE)
        order_by = param(req, "org_by") or "-id"
        if order_by.strip("-") != "id":
            raise bad(texts.ORDER_BY_INVALID)
        uuids = uuid_forms(dtable_uuid)
        if uuids is None:
            raise bad(texts.BAD_REQUEST)
        logs, count = runs.list_logs(
            self.store, uuids, script_name, order_by.startswith("-"), (page - 1) * per_page, per_page
        )
        resp.media = {"task_logs": logs, "count": count}


class TaskLog:
    """GET /tasks/{dtable_uuid}/{script_name}/logs/{log_id}/: {"task_log": ScriptLog}.

    404 {"error_msg": "Script log not found"} for an unknown id (upstream answered 500), another base or
    another script.
    """

    def __init__(self, ctx: Context, store: Store) -> None:
        self.ctx = ctx
        self.store = store

    def on_get(
        self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str, script_name: str, log_id: str
    ) -> None:
        self.ctx.require_auth(req, texts.FORBIDDEN_SHORT)
        run_id = parse_id(log_id)
        if run_id is None:
            raise _NOT_FOUND
        task_log = runs.get_run(self.store, run_id)
        if task_log is None or not same_uuid(task_log["dtable_uuid"], dtable_uuid):
            raise _NOT_FOUND
        if task_log["script_name"] != script_name:
            raise _NOT_FOUND
        resp.media = {"task_log": task_log}
