"""The scheduler's HTTP API: every route upstream's scheduler serves, built from a config object."""

from __future__ import annotations

import logging
from typing import Any

import falcon

from scheduler import texts
from scheduler.auth import TokenAuth
from scheduler.config import Config
from scheduler.db import Store, open_store
from scheduler.resources.callbacks import ResultCallback, RunningCallback
from scheduler.resources.common import ApiError, Context, render_error
from scheduler.resources.health import Health
from scheduler.resources.logs import TaskLog, TaskLogs
from scheduler.resources.ping import Ping
from scheduler.resources.runs import RunDraftScript, RunScript, RunStatus
from scheduler.resources.statistics import AdminRuns, GroupedStatistics, MonthlyStatistics, RunningCount
from scheduler.seatable import SeaTable

log = logging.getLogger(__name__)


def _api_error(req: falcon.Request, resp: falcon.Response, ex: ApiError, params: dict[str, Any]) -> None:
    render_error(resp, ex)


def _unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict[str, Any]) -> None:
    """Log the traceback, answer upstream's plain 500 text: never a traceback in the body."""
    log.exception("unhandled error on %s %s", req.method, req.path)
    render_error(resp, ApiError(500, texts.INTERNAL_ERROR))


def create_app(config: Config, store: Store | None = None, seatable: SeaTable | None = None) -> falcon.App:
    config.require_auth_token()
    store = store or open_store(config)
    seatable = seatable or SeaTable(config.seatable_server_url, config.auth_token)
    ctx = Context(
        auth=TokenAuth(config.auth_token),
        clock=store.clock,
        max_body_bytes=config.max_body_bytes,
        accept_unauthenticated_callbacks=config.accept_unauthenticated_callbacks,
    )
    app = falcon.App()
    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler(ApiError, _api_error)

    app.add_route("/ping/", Ping())
    app.add_route("/health", Health(store))
    app.add_route("/run-script/", RunScript(ctx, store, seatable))
    app.add_route("/run-draft-script/", RunDraftScript(ctx, store, seatable))
    app.add_route("/run-script/{script_id}/", RunStatus(ctx, store))
    app.add_route("/tasks/{dtable_uuid}/{script_name}/logs/", TaskLogs(ctx, store))
    app.add_route("/tasks/{dtable_uuid}/{script_name}/logs/{log_id}/", TaskLog(ctx, store))
    app.add_route("/scripts-running-count/", RunningCount(ctx, store))
    for target in ("user", "org", "base"):
        app.add_route(f"/admin/statistics/scripts-running/by-{target}/", MonthlyStatistics(ctx, store, target))
    app.add_route("/admin/runs/", AdminRuns(ctx, store))
    app.add_route("/admin/statistics/by-base/", GroupedStatistics(ctx, store, "base"))
    app.add_route("/admin/statistics/by-day/", GroupedStatistics(ctx, store, "day"))
    app.add_route("/script-running-callback/", RunningCallback(ctx, store))
    app.add_route("/script-result/", ResultCallback(ctx, store))
    return app
