"""Calls from the scheduler to SeaTable's dtable-web, authenticated with the shared secret."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError

from scheduler.names import is_script_name
from scheduler.sessions import ThreadSessions

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 30
# A download happens between the hand-off mark and the POST, so it is bounded well inside
# PYTHON_DISPATCH_HANDOFF_SECS together with the POST's retries (nodes.RETRY_BUDGET).
SCRIPT_TIMEOUT = (3.0, 10.0)  # connect, each read
SCRIPT_BUDGET = 15.0  # the whole download
SCRIPT_MAX_BYTES = 1 << 20  # the sandbox's limit for script_content


@dataclass(frozen=True)
class TaskFile:
    """What the sandbox needs to run a saved script: a one-time download URL and a one-hour API token."""

    script_url: str
    temp_api_token: str


@dataclass(frozen=True)
class Download:
    """A script download by the dispatcher: its text, or None with whether the one-time URL may be spent."""

    content: str | None
    spent: bool = False


class ScriptNotFound(Exception):
    """dtable-web answered 404: the base or the script is gone; retrying cannot help."""


class FetchFailed(Exception):
    """dtable-web did not answer usefully (down, 5xx, garbage); the reason is shown to the user."""


class SeaTable:
    """One pooled HTTP session per thread: gunicorn's gthread workers call this concurrently."""

    def __init__(self, server_url: str, auth_token: str) -> None:
        self.server_url = server_url.rstrip("/")
        self.headers = {"Authorization": f"Token {auth_token}"}
        self._sessions = ThreadSessions()

    @property
    def session(self) -> requests.Session:
        return self._sessions.get()

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

    def task_file(self, dtable_uuid: str, script_name: str) -> TaskFile:
        """Fetch the script's one-time URL and temp_api_token just before the hand-off (upstream's get_script_file)."""
        try:
            base = str(uuid.UUID(dtable_uuid))
        except ValueError:
            raise ScriptNotFound(dtable_uuid) from None
        if not is_script_name(script_name):  # a row from before names were checked: never another URL
            raise ScriptNotFound(script_name)
        url = f"{self.server_url}/api/v2.1/dtable/{base}/run-script/{quote(script_name, safe='')}/task/file/"
        try:
            response = self.session.get(url, headers=self.headers, timeout=TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            log.warning("task/file for %s %s failed: %s", base, script_name, exc)
            raise FetchFailed("SeaTable did not answer") from exc
        if response.status_code == 404:
            raise ScriptNotFound(script_name)
        if response.status_code != 200:
            log.warning("task/file for %s %s answered %s", base, script_name, response.status_code)
            raise FetchFailed(f"SeaTable answered HTTP {response.status_code}")
        try:
            data = response.json()
            script_url, token = data["script_url"], data["temp_api_token"]
        except (ValueError, KeyError, TypeError):
            raise FetchFailed("SeaTable answered without a script URL") from None
        if not isinstance(script_url, str) or not script_url or not isinstance(token, str):
            raise FetchFailed("Script URL is missing")
        return TaskFile(script_url, token)

    def download_script(self, script_url: str) -> Download:
        """GET the one-time script URL (no auth, like upstream's starter), so the sandbox gets the content.

        Only a failed connect leaves the URL unspent. A script that is not UTF-8 (the runner decodes a
        coding declaration itself) or over the sandbox's limit counts as not downloaded: the caller asks
        for a fresh URL and the sandbox downloads it, as before.
        """
        started = time.monotonic()
        try:
            with self.session.get(script_url, timeout=SCRIPT_TIMEOUT, stream=True, allow_redirects=False) as response:
                status, body = response.status_code, b""
                for chunk in response.iter_content(65536):
                    body += chunk
                    if len(body) > SCRIPT_MAX_BYTES or time.monotonic() - started > SCRIPT_BUDGET:
                        status = 0  # too big or too slow: left to the sandbox, with a fresh URL
                        break
        except (requests.ConnectionError, requests.Timeout) as exc:
            spent = not _connect_failed(exc)
            log.info("script download failed (%s): the sandbox downloads it", type(exc).__name__)
            return Download(None, spent)
        except (requests.RequestException, OSError) as exc:
            log.info("script download failed (%s): the sandbox downloads it", type(exc).__name__)
            return Download(None, True)
        if status != 200 or len(body) > SCRIPT_MAX_BYTES:
            log.info("script download answered %s (%d bytes): the sandbox downloads it", status, len(body))
            return Download(None, True)
        try:
            return Download(bytes(body).decode("utf-8"))
        except UnicodeDecodeError:
            return Download(None, True)

    def send_exceeded_notification(self, org_id: int | None, owner: str | None) -> bool:
        """Tell SeaTable a team hit the rate limit (scripts-exceeded-notifications); False when it failed."""
        body: dict[str, Any] = {"org_ids": [org_id]} if org_id is not None else {"owners": [owner]}
        url = f"{self.server_url}/api/v2.1/scripts-exceeded-notifications/"
        try:
            response = self.session.post(url, headers=self.headers, json=body, timeout=TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            log.error("scripts-exceeded-notifications failed: %s", exc)
            return False
        if not response.ok:
            log.error("scripts-exceeded-notifications answered %s", response.status_code)
            return False
        return True


def _connect_failed(exc: requests.RequestException) -> bool:
    """A refused, unreachable or timed-out connect: not a byte of the request left, the URL is unspent."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    inner = exc.args[0] if exc.args else None
    return isinstance(inner, MaxRetryError) and isinstance(inner.reason, ConnectTimeoutError)
