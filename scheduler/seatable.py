"""Calls from the scheduler to SeaTable's dtable-web, authenticated with the shared secret."""

from __future__ import annotations

import logging
import threading
from typing import Any

import requests

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 30


class SeaTable:
    """One pooled HTTP session per thread: gunicorn's gthread workers call this concurrently."""

    def __init__(self, server_url: str, auth_token: str) -> None:
        self.server_url = server_url.rstrip("/")
        self.headers = {"Authorization": f"Token {auth_token}"}
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def scripts_running_limit(self, owner: str | None, org_id: int | None) -> int | None:
        """The monthly run limit of a team or user (-1 unlimited); None when SeaTable cannot say."""
        if org_id and org_id != -1:
            params: dict[str, Any] = {"org_id": org_id}
        else:
            params = {"username": owner}
        url = f"{self.server_url}/api/v2.1/scripts-running-limit/"
        try:
            response = self.session.get(url, headers=self.headers, params=params, timeout=TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            log.error("scripts-running-limit request failed: %s", exc)
            return None
        if response.status_code != 200:
            log.error("scripts-running-limit answered %s", response.status_code)
            return None
        try:
            limit = response.json()["scripts_running_limit"]
        except (ValueError, KeyError, TypeError):
            log.error("scripts-running-limit answered without a limit: %.200r", response.text)
            return None
        if isinstance(limit, bool) or not isinstance(limit, int):
            log.error("scripts-running-limit is not an integer: %r", limit)
            return None
        return limit
