"""GET /metrics for both services: a token check and Prometheus' text exposition of a registry.

/metrics is protected like the rest of each API, by a token: the service's metrics token when one is set
(so Prometheus need not hold a secret that can start runs), else the service's own API token. Prometheus
sends it as `Authorization: Bearer <token>` (`authorization: {credentials: ...}` in a scrape config);
`Token <token>` works too.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

import falcon
from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.exposition import choose_encoder

disable_created_metrics()  # no `_created` series next to every counter: they only double the scrape


class MetricsAuth:
    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("/metrics needs a token")
        self._accepted = (f"Bearer {token}".encode(), f"Token {token}".encode())

    def accepts(self, header: str | None) -> bool:
        given = (header or "").encode("utf-8", "surrogateescape")
        return any([hmac.compare_digest(given, accepted) for accepted in self._accepted])


class Metrics:
    """GET /metrics: 200 text exposition (OpenMetrics when asked for); 403 {"error"} without the token."""

    def __init__(self, registry: Callable[[], CollectorRegistry], auth: MetricsAuth) -> None:
        self.registry = registry
        self.auth = auth

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not self.auth.accepts(req.get_header("Authorization")):
            raise falcon.HTTPForbidden(description="metrics need the metrics token")
        encoder, content_type = choose_encoder(req.get_header("Accept") or "")
        resp.content_type = content_type
        resp.data = encoder(self.registry())
        resp.cache_control = ["no-store"]
