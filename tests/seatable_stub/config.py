"""Settings of the SeaTable stand-in, gathered in one object so the app factory takes a single argument."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StubConfig:
    """What the stub needs to know; everything else is state that tests change at run time.

    `secret` plays SeaTable's `PYTHON_SCHEDULER_AUTH_TOKEN` (dtable-web's `SEATABLE_FAAS_AUTH_TOKEN`): the
    scheduler sends it as `Token <secret>`, and dtable-web signs the `temp_api_token` JWT with it.
    `access_token_key` plays `DTABLE_PRIVATE_KEY`, which signs the base access tokens dtable-server checks.
    """

    secret: str
    access_token_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    scheduler_url: str | None = None
    scheduler_token: str | None = None
    poll_interval: float = 2.0
    control_loopback_only: bool = True
