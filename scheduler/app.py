"""The scheduler's HTTP API: every route upstream's scheduler serves, built from a config object."""

from __future__ import annotations

import logging
from typing import Any

import falcon
from falcon.routing import CompiledRouter

from observability.metrics_http import Metrics, MetricsAuth
from scheduler import texts
from scheduler.auth import TokenAuth
from scheduler.config import Config
from scheduler.db import Store, open_store
from scheduler.metrics import ApiMetrics, registry_factory
from scheduler.openapi import document
from scheduler.resources.callbacks import ResultCallback, RunningCallback
from scheduler.resources.common import ApiError, Context, render_error
from scheduler.resources.health import Health
from scheduler.resources.logs import TaskLog, TaskLogs
from scheduler.resources.openapi import OpenApi
from scheduler.resources.ping import Ping
from scheduler.resources.routing import SlashRedirect, add_route
from scheduler.resources.runs import RunDraftScript, RunScript, RunStatus
from scheduler.resources.statistics import AdminRuns, GroupedStatistics, MonthlyStatistics, RunningCount
from scheduler.resources.status import StatusAsset, StatusAuth, StatusData
from scheduler.seatable import SeaTable
from scheduler.status import StatusReport
from scheduler.wakeup import WakeSignal, wake_dir

log = logging.getLogger(__name__)
TARGETS = ("user", "org", "base")  # the monthly statistics' /by-{target}/ routes


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
        auth=TokenAuth(config.auth_token, config.previous_auth_tokens),
        clock=store.clock,
        max_body_bytes=config.max_body_bytes,
        accept_unauthenticated_callbacks=config.accept_unauthenticated_callbacks,
        wake_dispatchers=WakeSignal(wake_dir(config)).notify,
    )
    metrics = ApiMetrics()
    status_auth = StatusAuth(config.status_token)
    status_page = StatusAsset(status_auth)
    router = CompiledRouter()
    app = falcon.App(router=router)
    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler(ApiError, _api_error)

    routes: list[tuple[str, object]] = [
        ("/ping/", Ping()),
        ("/health", Health(store)),
        ("/run-script/", RunScript(ctx, store, seatable)),
        ("/run-draft-script/", RunDraftScript(ctx, store, seatable)),
        ("/run-script/{script_id}/", RunStatus(ctx, store)),
        ("/tasks/{dtable_uuid}/{script_name}/logs/", TaskLogs(ctx, store)),
        ("/tasks/{dtable_uuid}/{script_name}/logs/{log_id}/", TaskLog(ctx, store)),
        ("/scripts-running-count/", RunningCount(ctx, store)),
        *((f"/admin/statistics/scripts-running/by-{t}/", MonthlyStatistics(ctx, store, t)) for t in TARGETS),
        ("/admin/runs/", AdminRuns(ctx, store)),
        ("/admin/statistics/by-base/", GroupedStatistics(ctx, store, "base")),
        ("/admin/statistics/by-day/", GroupedStatistics(ctx, store, "day")),
        ("/script-running-callback/", RunningCallback(ctx, store, metrics)),
        ("/script-result/", ResultCallback(ctx, store, metrics)),
        ("/metrics", Metrics(registry_factory(store, metrics), MetricsAuth(config.metrics_credential))),
        ("/status/", status_page),
        ("/status/{name}", status_page),
        ("/status/data", StatusData(status_auth, StatusReport(store, config.sandbox_urls))),
        ("/openapi.json", OpenApi(document)),
    ]
    for template, resource in routes:
        add_route(app, template, resource)
    app.add_sink(SlashRedirect(router), prefix="/")
    return app
