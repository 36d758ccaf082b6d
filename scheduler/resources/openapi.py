"""GET /openapi.json: the API's description (no auth: it holds nothing secret)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import falcon


class OpenApi:
    def __init__(self, document: Callable[[], dict[str, Any]]) -> None:
        self.body = json.dumps(document()).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.body
