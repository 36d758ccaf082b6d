"""One pooled requests.Session per thread: sessions are not thread-safe, their connections are worth keeping."""

from __future__ import annotations

import threading
from typing import Any

import requests


class _Session(requests.Session):
    """A session whose own CA bundle wins: requests otherwise lets REQUESTS_CA_BUNDLE from the environment
    replace it on every request (psf/requests#3829), and the nodes' CA is the configured one."""

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if isinstance(self.verify, str) and verify in (None, True):
            settings["verify"] = self.verify
        return settings


class ThreadSessions:
    def __init__(self, verify: str | bool = True, cert: tuple[str, str] | None = None) -> None:
        """`verify`: a CA bundle's path (or True: the system's CAs); `cert`: a client certificate and key."""
        self._local = threading.local()
        self._verify = verify
        self._cert = cert

    def get(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = _Session()
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
