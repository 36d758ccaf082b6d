"""Liveness, readiness and the detailed health report."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import falcon

# (healthy, body): the node's report, built from the last background check (no Podman call).
Report = Callable[[], tuple[bool, dict[str, object]]]


class Ping:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "Pong"


class UpstreamHealth:
    """upstream's starter probe path."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "OK"


class Ready:
    """GET /ready, polled by the dispatcher about once a second: cheap, no Podman call.

    200 {"node", "slots": {"total", "busy", "free"}} when the node takes runs; 503 {"error": reason, "node"}.
    """

    def __init__(self, report: Report) -> None:
        self.report = report

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        healthy, body = self.report()
        resp.status = falcon.HTTP_200 if healthy else falcon.HTTP_503
        resp.media = body


class Health:
    """GET /health: slots, image, limits, outbox (pending, delivery errors), pool, egress, for operators.

    "status": "ok" with 200, or "unhealthy" with the "problems" and 503.
    """

    def __init__(self, report: Report) -> None:
        self.report = report

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        healthy, body = self.report()
        resp.status = falcon.HTTP_200 if healthy else falcon.HTTP_503
        resp.media = body


class OpenApi:
    """GET /openapi.json: the API's description."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.body = json.dumps(document).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.body
