"""Liveness and capability probes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import falcon


class Ping:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "Pong"


class UpstreamHealth:
    """upstream's starter probe path."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "OK"


class Health:
    """Slots, image, enforced limits and outbox state, for operators and the dispatcher."""

    def __init__(self, report: Callable[[], dict[str, object]]) -> None:
        self.report = report

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.report()


class OpenApi:
    """GET /openapi.json: the API's description."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.body = json.dumps(document).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.body
