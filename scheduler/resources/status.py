"""The status page at /status/: an HTML page, its script and style, and the JSON it draws from.

Behind its own credential: HTTP Basic with PYTHON_SCHEDULER_STATUS_TOKEN as the password (any user name), never
SeaTable's secret; without it configured the page does not exist (404). Everything is served from the package:
no CDN, no third-party script. The page's script inserts every text with textContent, and the Content Security
Policy allows nothing but this origin's own script and style, so a script name or output cannot inject markup.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from importlib import resources

import falcon

from scheduler.status import StatusReport

REALM = 'Basic realm="SeaTable Python pipeline status", charset="UTF-8"'
ASSETS = {
    "": ("index.html", "text/html; charset=utf-8"),
    "status.js": ("status.js", "text/javascript; charset=utf-8"),
    "status.css": ("status.css", "text/css; charset=utf-8"),
}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _asset(name: str) -> bytes:
    return resources.files("scheduler").joinpath("status_page", name).read_bytes()


class StatusAuth:
    """HTTP Basic: any user name, the status token as the password (compared in constant time)."""

    def __init__(self, token: str) -> None:
        self.expected = token.encode()

    def check(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not self.expected:
            raise falcon.HTTPNotFound()
        header = req.get_header("Authorization") or ""
        scheme, _, encoded = header.partition(" ")
        password = b""
        if scheme.lower() == "basic":
            try:
                password = base64.b64decode(encoded.strip(), validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                password = b""
        if not hmac.compare_digest(password, self.expected):
            raise falcon.HTTPUnauthorized(
                title="401 Unauthorized", description="the status page needs its password", challenges=[REALM]
            )
        resp.set_headers(HEADERS)


class StatusAsset:
    """GET /status/ (the page), /status/status.js, /status/status.css."""

    def __init__(self, auth: StatusAuth) -> None:
        self.auth = auth
        self.files = {name: (_asset(file), media) for name, (file, media) in ASSETS.items()}

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str = "") -> None:
        self.auth.check(req, resp)
        if name not in self.files:
            raise falcon.HTTPNotFound()
        resp.data, resp.content_type = self.files[name]


class StatusData:
    """GET /status/data: the numbers the page draws (scheduler.status), as JSON."""

    def __init__(self, auth: StatusAuth, report: StatusReport) -> None:
        self.auth = auth
        self.report = report

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.auth.check(req, resp)
        resp.media = self.report.data()
