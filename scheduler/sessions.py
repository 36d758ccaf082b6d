"""One pooled requests.Session per thread: sessions are not thread-safe, their connections are worth keeping."""

from __future__ import annotations

import threading

import requests


class ThreadSessions:
    def __init__(self, verify: str | bool = True, cert: tuple[str, str] | None = None) -> None:
        """`verify`: a CA bundle's path (or True: the system's CAs); `cert`: a client certificate and key."""
        self._local = threading.local()
        self._verify = verify
        self._cert = cert

    def get(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.verify = self._verify
            session.cert = self._cert
        return session

    def reset(self) -> None:
        """Drop this thread's session and its kept-alive connections: the next request opens a fresh one.

        A connection the peer closed or reset may have company in the pool; a retry must not meet it.
        """
        session: requests.Session | None = getattr(self._local, "session", None)
        self._local.session = None
        if session is not None:
            session.close()
