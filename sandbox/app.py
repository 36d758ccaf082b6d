"""The sandbox's HTTP surface: create_app(config, service) builds the Falcon app."""

from __future__ import annotations

import hmac
from typing import Any

import falcon

from sandbox.resources.health import Health, Ping, Ready, Report, UpstreamHealth
from sandbox.resources.run import RunPython, RunStatus

MAX_BODY = 4 << 20


class TokenAuth:
    """`Authorization: Token <PYTHON_SANDBOX_AUTH_TOKEN>` on every route but the health probes."""

    OPEN = frozenset({"/ping/", "/_/health", "/health", "/ready", "/"})

    def __init__(self, token: str) -> None:
        self.expected = f"Token {token}".encode()

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.path in self.OPEN:
            return
        given = (req.get_header("Authorization") or "").encode()
        if not hmac.compare_digest(given, self.expected):
            raise falcon.HTTPForbidden(description="invalid or missing token")
        if req.content_length and req.content_length > MAX_BODY:
            raise falcon.HTTPContentTooLarge(description=f"body over {MAX_BODY} bytes")


def json_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError, params: Any) -> None:
    """Every error as {"error": "..."}: what callers parse, never a traceback."""
    resp.status = exc.status
    resp.media = {"error": exc.description or exc.title}
    if exc.headers:
        resp.set_headers(exc.headers)


def create_app(auth_token: str, service: Any, health: Report, ready: Report) -> falcon.App:
    app = falcon.App(middleware=[TokenAuth(auth_token)])
    app.add_error_handler(falcon.HTTPError, json_error)
    # JSON only: a form body would otherwise parse into something schema-shaped but wrong.
    app.req_options.media_handlers = falcon.media.Handlers({falcon.MEDIA_JSON: falcon.media.JSONHandler()})
    app.add_route("/function/run-python", RunPython(service))
    app.add_route("/function/runs/{script_id:int(min=1)}", RunStatus(service))
    app.add_route("/ping/", Ping())
    app.add_route("/", Ping())
    app.add_route("/_/health", UpstreamHealth())
    app.add_route("/health", Health(health))
    app.add_route("/ready", Ready(ready))
    return app
