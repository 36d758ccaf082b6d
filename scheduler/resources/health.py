"""GET /health: whether this scheduler can do its work, which means whether its database answers."""

from __future__ import annotations

import falcon

from scheduler import texts
from scheduler.db import Store

MAX_REASON_CHARS = 300


def database_problem(store: Store) -> str | None:
    """None when a trivial query succeeds, else one line saying why it did not (never a credential)."""
    try:
        with store.reading():
            store.select("SELECT 1")
    except Exception as exc:  # any failure of the database is the answer, not an error of this endpoint
        cause = getattr(exc, "original_exc", None) or exc
        line = (str(cause).splitlines() or [""])[0]
        return f"{type(cause).__name__}: {line}"[:MAX_REASON_CHARS]
    return None


class Health:
    """200 {"status": "ok", "database": "ok"}; 503 {"status": "unhealthy", "database": reason}. No auth.

    For load balancers and container health checks; /ping/ stays the cheap liveness answer upstream had.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        problem = database_problem(self.store)
        if problem is None:
            resp.media = {"status": texts.HEALTH_OK, "database": texts.HEALTH_OK}
        else:
            resp.status = falcon.HTTP_503
            resp.media = {"status": texts.HEALTH_UNHEALTHY, "database": problem}
