"""The sandbox's HTTP surface: create_app(config, service) builds the Falcon app."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from typing import Any

import falcon
from prometheus_client import CollectorRegistry

from observability.metrics_http import Metrics, MetricsAuth
from sandbox import node_proof
from sandbox.openapi import document
from sandbox.resources.health import Health, OpenApi, Ping, Ready, Report, UpstreamHealth
from sandbox.resources.run import RunPython, RunStatus

MAX_BODY = 4 << 20


class TokenAuth:
    """`Authorization: Token <PYTHON_SANDBOX_AUTH_TOKEN>` (or a previous token) on every route but the probes.

    Answers to a request carrying a challenge are signed with every accepted token (sandbox.node_proof),
    so the dispatcher believes this node's /ready and run states without ever sending it a token first.
    """

    # /metrics checks its own token (Metrics); /openapi.json describes the API and holds nothing secret.
    OPEN = frozenset({"/ping/", "/_/health", "/health", "/ready", "/", "/metrics", "/openapi.json"})

    def __init__(self, tokens: Sequence[str]) -> None:
        if isinstance(tokens, str):
            raise TypeError("TokenAuth takes a list of tokens (the current one first), not one string")
        self.tokens = tuple(t for t in tokens if t)
        if not self.tokens:
            raise ValueError("the sandbox needs a token")
        self.expected = [f"Token {token}".encode() for token in self.tokens]

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.path in self.OPEN:
            return
        given = (req.get_header("Authorization") or "").encode("utf-8", "surrogateescape")
        if not any([hmac.compare_digest(given, expected) for expected in self.expected]):
            raise falcon.HTTPForbidden(description="invalid or missing token")
        if req.content_length and req.content_length > MAX_BODY:
            raise falcon.HTTPContentTooLarge(description=f"body over {MAX_BODY} bytes")

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any, succeeded: bool) -> None:
        challenge = req.get_header(node_proof.CHALLENGE_HEADER)
        if not node_proof.valid_challenge(challenge) or resp.stream is not None:
            return
        assert challenge is not None
        body = resp.render_body() or b""  # the very bytes sent: media is rendered once and cached
        resp.set_header(node_proof.PROOF_HEADER, node_proof.sign(self.tokens, challenge, resp.status_code, body))


def json_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError, params: Any) -> None:
    """Every error as {"error": "..."}: what callers parse, never a traceback."""
    resp.status = exc.status
    resp.media = {"error": exc.description or exc.title}
    if exc.headers:
        resp.set_headers(exc.headers)


def create_app(
    auth_tokens: Sequence[str],
    service: Any,
    health: Report,
    ready: Report,
    metrics: tuple[Callable[[], CollectorRegistry], str] | None = None,
) -> falcon.App:
    """`metrics`: the registry to expose at /metrics and the token that guards it (None: no /metrics)."""
    app = falcon.App(middleware=[TokenAuth(auth_tokens)])
    app.add_error_handler(falcon.HTTPError, json_error)
    # JSON only: a form body would otherwise parse into something schema-shaped but wrong.
    app.req_options.media_handlers = falcon.media.Handlers({falcon.MEDIA_JSON: falcon.media.JSONHandler()})
    app.add_route("/function/run-python", RunPython(service))
    # Bounded as SQLite integers are: a larger id is no run of ours (404), not an overflow (500).
    app.add_route("/function/runs/{script_id:int(min=1, max=9223372036854775807)}", RunStatus(service))
    app.add_route("/ping/", Ping())
    app.add_route("/", Ping())
    app.add_route("/_/health", UpstreamHealth())
    app.add_route("/health", Health(health))
    app.add_route("/ready", Ready(ready))
    app.add_route("/openapi.json", OpenApi(document()))
    if metrics is not None:
        registry, token = metrics
        app.add_route("/metrics", Metrics(registry, MetricsAuth(token)))
    return app
