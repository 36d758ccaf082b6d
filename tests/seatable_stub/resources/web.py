"""dtable-web endpoints: what the scheduler calls (shared secret) and what `Base.auth()` calls (JWT)."""

from __future__ import annotations

import hmac

import falcon

from .. import tokens
from ..state import InvalidScriptName, SeaTable, UnknownBase, UnknownScript
from .errors import json_body, token_from_header, web_error


def require_shared_secret(req: falcon.Request, seatable: SeaTable) -> None:
    """dtable-web's check of `Authorization: Token <SEATABLE_FAAS_AUTH_TOKEN>`; 403 otherwise."""
    presented = (req.get_header("Authorization") or "").encode()
    if not hmac.compare_digest(presented, f"Token {seatable.config.secret}".encode()):
        raise web_error(403, "Permission denied.")


class TaskFileResource:
    """GET /api/v2.1/dtable/{dtable_uuid}/run-script/{script_name}/task/file/

    200 {"script_url": one-time absolute URL, "temp_api_token": HS256 JWT (secret) with dtable_uuid, app_name,
    exp now+3600, username ""}; 400 name not `.py`; 404 unknown base or script; 403 wrong shared secret.
    """

    def __init__(self, seatable: SeaTable) -> None:
        self.seatable = seatable

    def on_get(self, req: falcon.Request, resp: falcon.Response, dtable_uuid: str, script_name: str) -> None:
        require_shared_secret(req, self.seatable)
        try:
            task = self.seatable.issue_task_file(dtable_uuid, script_name, req.prefix)
        except UnknownBase:
            raise web_error(404, f"Base {dtable_uuid} not found.") from None
        except InvalidScriptName:
            raise web_error(400, "script_name invalid.") from None
        except UnknownScript:
            raise web_error(404, f"Script {script_name} not found.") from None
        resp.media = {"script_url": task.script_url, "temp_api_token": task.temp_api_token}


class ScriptDownloadResource:
    """GET /seafhttp/files/{token}/{name}: the one-time script download; 404 on every GET after the first."""

    def __init__(self, seatable: SeaTable) -> None:
        self.seatable = seatable

    def on_get(self, req: falcon.Request, resp: falcon.Response, token: str, name: str) -> None:
        content = self.seatable.fetch_script(token)
        if content is None:
            resp.status = falcon.HTTP_404
            resp.content_type = falcon.MEDIA_TEXT
            resp.text = "Bad access token"
            return
        resp.content_type = "application/octet-stream"
        resp.set_header("Content-Disposition", f'attachment; filename="{name}"')
        resp.data = content.encode("utf-8")


class ScriptsRunningLimitResource:
    """GET /api/v2.1/scripts-running-limit/?username=|?org_id= -> {"scripts_running_limit": n}; -1: none."""

    def __init__(self, seatable: SeaTable) -> None:
        self.seatable = seatable

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        require_shared_secret(req, self.seatable)
        username = req.get_param("username")
        raw_org_id = req.get_param("org_id")
        if raw_org_id:
            try:
                org_id = int(raw_org_id)
            except ValueError:
                raise web_error(400, "org_id invalid.") from None
            limit = self.seatable.scripts_running_limit(org_id=org_id)
        elif username:
            limit = self.seatable.scripts_running_limit(username=username)
        else:
            raise web_error(400, "username or org_id invalid.")
        resp.media = {"scripts_running_limit": limit}


class ScriptsExceededNotificationsResource:
    """POST /api/v2.1/scripts-exceeded-notifications/ {"org_ids": [int]} or {"owners": [str]} -> success."""

    def __init__(self, seatable: SeaTable) -> None:
        self.seatable = seatable

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        require_shared_secret(req, self.seatable)
        body = json_body(req)
        org_ids = body.get("org_ids") or []
        owners = body.get("owners") or []
        valid = (
            isinstance(org_ids, list)
            and isinstance(owners, list)
            and all(isinstance(o, int) and not isinstance(o, bool) for o in org_ids)
            and all(isinstance(o, str) for o in owners)
            and (org_ids or owners)
        )
        if not valid:
            raise web_error(400, "org_ids or owners invalid.")
        self.seatable.record_notification(org_ids, owners)
        resp.media = {"success": True}


class AppAccessTokenResource:
    """GET /api/v2.1/dtable/app-access-token/ with `Token <temp_api_token>`.

    200 {access_token, dtable_uuid, dtable_server, dtable_socket, dtable_db, workspace_id, dtable_name,
    app_name, use_api_gateway}; 403 {"error_msg": "Token expired."} once the stub clock passes `exp` (the
    client turns that into AuthExpiredError); 401 for a missing, malformed or wrongly signed token; 404 for a
    deleted base.
    """

    def __init__(self, seatable: SeaTable) -> None:
        self.seatable = seatable

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        token = token_from_header(req)
        if token is None:
            raise web_error(401, "Authentication credentials were not provided.")
        try:
            resp.media = self.seatable.app_access(token, req.prefix)
        except tokens.TokenExpired:
            raise web_error(403, "Token expired.") from None
        except tokens.TokenInvalid:
            raise web_error(401, "Invalid token.") from None
        except UnknownBase:
            raise web_error(404, "Base not found.") from None
