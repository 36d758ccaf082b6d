"""One pooled requests.Session per thread: sessions are not thread-safe, their connections are worth keeping."""

from __future__ import annotations

import threading

import requests


class ThreadSessions:
    def __init__(self) -> None:
        self._local = threading.local()

    def get(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session
