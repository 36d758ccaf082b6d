"""Routing details upstream's Flask gives every route, which Falcon does not: HEAD and the trailing slash.

- HEAD on a GET route answers as GET without the body (Falcon drops the body of a HEAD answer itself and
  keeps Content-Length).
- A route's path without its trailing slash (`GET /ping`) answers 308 to the slashed path, query kept, for
  every method (Werkzeug's strict slashes); anything else unknown stays a 404.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import falcon
from falcon.routing import CompiledRouter

_PATH_SAFE = "/:@!$&'()*+,;=-._~"  # what may stay unescaped in a path (RFC 3986 pchar and "/")


def add_route(app: falcon.App, template: str, resource: object) -> None:
    """app.add_route, plus HEAD answered by the GET responder where the resource has no HEAD of its own."""
    on_get = getattr(resource, "on_get", None)
    if on_get is not None and not hasattr(resource, "on_head"):
        setattr(resource, "on_head", on_get)  # noqa: B010 - an instance attribute, seen by Falcon's router
    app.add_route(template, resource)


class SlashRedirect:
    """Sink for paths no route matched: 308 to the same path with a trailing slash when that one is a route."""

    def __init__(self, router: CompiledRouter) -> None:
        self.router = router

    def __call__(self, req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
        slashed = req.path + "/"
        if req.path.endswith("/") or self.router.find(slashed) is None:
            raise falcon.HTTPNotFound()
        location = quote(slashed, safe=_PATH_SAFE)
        if req.query_string:
            location += "?" + req.query_string
        raise falcon.HTTPPermanentRedirect(location)
