"""Errors in the shapes SeaTable's services answer with, so clients parse them as they do in production."""

from __future__ import annotations

from typing import Any

import falcon


class SeaTableError(Exception):
    """An error with a SeaTable-shaped body (dtable-web: `error_msg`, dtable-server: `error_message`)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


def web_error(status: int, message: str) -> SeaTableError:
    """dtable-web (Django REST framework) style."""
    return SeaTableError(status, {"error_msg": message})


def server_error(status: int, message: str) -> SeaTableError:
    """dtable-server / API gateway style."""
    return SeaTableError(status, {"error_message": message})


def handle_seatable_error(req: falcon.Request, resp: falcon.Response, ex: SeaTableError,
                          params: dict[str, Any]) -> None:
    """Falcon error handler that renders a SeaTableError."""
    resp.status = falcon.code_to_http_status(ex.status)
    resp.media = ex.body


def json_body(req: falcon.Request, make_error: Any = web_error) -> dict[str, Any]:
    """The request's JSON object, or a SeaTable-shaped 400."""
    try:
        body = req.get_media()
    except falcon.HTTPError:
        raise make_error(400, "Bad request") from None
    if not isinstance(body, dict):
        raise make_error(400, "Bad request")
    return body


def token_from_header(req: falcon.Request) -> str | None:
    """The credential of `Authorization: Token <x>` (or `Bearer <x>`, which SeaTable also takes)."""
    value = req.get_header("Authorization") or ""
    scheme, _, credential = value.partition(" ")
    if scheme.lower() in ("token", "bearer") and credential.strip():
        return credential.strip()
    return None
