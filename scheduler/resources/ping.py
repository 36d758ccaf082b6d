"""Liveness check SeaTable's admin page calls."""

from __future__ import annotations

import falcon

from scheduler import texts
from scheduler.resources.common import TEXT_TYPE


class Ping:
    """GET /ping/: "Pong" (no auth, no database access, so it stays cheap for health checks)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = TEXT_TYPE
        resp.text = texts.PONG
