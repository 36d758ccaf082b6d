"""The app factory: one domain object; the routes of dtable-web, dtable-server, API gateway and /_stub/."""

from __future__ import annotations

import falcon

from .button import RunScriptButton
from .config import StubConfig
from .resources import base_api, control, web
from .resources.errors import SeaTableError, handle_seatable_error
from .runs import RunTracker
from .state import SeaTable

DTABLE_SERVER_V1 = "/dtable-server/api/v1/dtables/{dtable_uuid}"
GATEWAY_V2 = "/api-gateway/api/v2/dtables/{dtable_uuid}"


class StubApp(falcon.App[falcon.Request, falcon.Response]):
    """The stand-in's WSGI app: `seatable` is its state, `runs` the button runs it follows (or None)."""

    def __init__(self, config: StubConfig, seatable: SeaTable | None = None) -> None:
        super().__init__(middleware=[control.ControlGuard(config.control_loopback_only)])
        # SeaTable's URLs end in "/", clients sometimes drop it; match both like Django's APPEND_SLASH would.
        self.req_options.strip_url_path_trailing_slash = True
        self.config = config
        self.seatable = seatable or SeaTable(config)
        self.runs: RunTracker | None = None
        if config.scheduler_url and config.scheduler_token:
            button = RunScriptButton(config.scheduler_url, config.scheduler_token,
                                     poll_interval=config.poll_interval)
            self.runs = RunTracker(button)
        self.add_error_handler(SeaTableError, handle_seatable_error)
        self._add_seatable_routes()
        self._add_control_routes()

    def _add_seatable_routes(self) -> None:
        seatable = self.seatable
        self.add_route("/api/v2.1/dtable/{dtable_uuid}/run-script/{script_name}/task/file",
                       web.TaskFileResource(seatable))
        self.add_route("/seafhttp/files/{token}/{name}", web.ScriptDownloadResource(seatable))
        self.add_route("/api/v2.1/scripts-running-limit", web.ScriptsRunningLimitResource(seatable))
        self.add_route("/api/v2.1/scripts-exceeded-notifications",
                       web.ScriptsExceededNotificationsResource(seatable))
        self.add_route("/api/v2.1/dtable/app-access-token", web.AppAccessTokenResource(seatable))

        server_rows = base_api.ServerRowsResource(seatable)
        self.add_route(f"{DTABLE_SERVER_V1}/rows", server_rows)
        self.add_route(f"{DTABLE_SERVER_V1}/batch-append-rows", server_rows, suffix="batch_append")
        self.add_route(f"{DTABLE_SERVER_V1}/batch-update-rows", server_rows, suffix="batch_update")
        self.add_route(f"{DTABLE_SERVER_V1}/batch-delete-rows", server_rows, suffix="batch_delete")
        server = base_api.DTABLE_SERVER
        self.add_route(f"{DTABLE_SERVER_V1}/rows/{{row_id}}", base_api.RowResource(seatable, server))
        self.add_route(f"{DTABLE_SERVER_V1}/metadata", base_api.MetadataResource(seatable, server))

        self.add_route(f"{GATEWAY_V2}/rows", base_api.GatewayRowsResource(seatable))
        self.add_route(f"{GATEWAY_V2}/rows/{{row_id}}", base_api.RowResource(seatable, base_api.GATEWAY))
        self.add_route(f"{GATEWAY_V2}/metadata", base_api.MetadataResource(seatable, base_api.GATEWAY))

    def _add_control_routes(self) -> None:
        seatable = self.seatable
        self.add_route("/_stub/reset", control.ResetResource(seatable))
        self.add_route("/_stub/bases", control.BasesResource(seatable))
        self.add_route("/_stub/bases/{dtable_uuid}", control.BaseResource(seatable))
        self.add_route("/_stub/bases/{dtable_uuid}/scripts", control.ScriptsResource(seatable))
        self.add_route("/_stub/bases/{dtable_uuid}/tables", control.TablesResource(seatable))
        self.add_route("/_stub/bases/{dtable_uuid}/tables/{table}/rows", control.TableRowsResource(seatable))
        self.add_route("/_stub/bases/{dtable_uuid}/calls", control.CallsResource(seatable))
        self.add_route("/_stub/scripts-running-limits", control.LimitsResource(seatable))
        self.add_route("/_stub/notifications", control.NotificationsResource(seatable))
        self.add_route("/_stub/script-urls", control.ScriptUrlsResource(seatable))
        self.add_route("/_stub/clock", control.ClockResource(seatable))
        self.add_route("/_stub/settings", control.SettingsResource(seatable))
        self.add_route("/_stub/runs", control.RunsResource(self.runs))
        self.add_route("/_stub/runs/{script_id:int}", control.RunResource(self.runs))


def create_app(config: StubConfig, seatable: SeaTable | None = None) -> StubApp:
    """Build the stand-in; pass `seatable` to share state with a test, else a fresh one is made."""
    return StubApp(config, seatable)
