"""The stand-in's whole state: bases, scripts, rows, limits, issued script URLs and notifications.

Plain objects with a lock, knowing nothing of HTTP, so tests assert on them directly and resources stay thin.
"""

from __future__ import annotations

import copy
import secrets
import string
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from . import tokens
from .clock import Clock
from .config import StubConfig
from .rows import Row, Table

TEMP_API_TOKEN_TTL = 3600
ACCESS_TOKEN_TTL = 3 * 24 * 3600


class UnknownBase(LookupError):
    """No base with that uuid."""


class UnknownScript(LookupError):
    """The base has no script of that name."""


class UnknownTable(LookupError):
    """The base has no table of that name or id."""


class InvalidScriptName(ValueError):
    """dtable-web only runs `.py` scripts."""


def normalize_uuid(value: str) -> str:
    """A base uuid as 32 hex digits, from either of SeaTable's spellings; UnknownBase if it is neither."""
    try:
        return uuid.UUID(value).hex
    except (ValueError, AttributeError, TypeError):
        raise UnknownBase(value) from None


@dataclass(frozen=True)
class ApiCall:
    """One base API request, so tests can tell the gateway from dtable-server."""

    api: str  # "api-gateway" or "dtable-server"
    operation: str  # e.g. "list_rows", "append_rows"
    table: str | None


@dataclass
class ScriptUrl:
    """A one-time download URL handed out with a task file; `fetch_count` counts every GET, served or not."""

    token: str
    dtable_uuid: str
    script_name: str
    url: str
    issued_at: float
    content: str
    fetch_count: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the control API (without the script text)."""
        return {
            "url": self.url,
            "token": self.token,
            "dtable_uuid": self.dtable_uuid,
            "script_name": self.script_name,
            "issued_at": self.issued_at,
            "fetch_count": self.fetch_count,
        }


@dataclass(frozen=True)
class Notification:
    """One POST to scripts-exceeded-notifications, as received."""

    org_ids: tuple[int, ...]
    owners: tuple[str, ...]
    received_at: float

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the control API."""
        return {"org_ids": list(self.org_ids), "owners": list(self.owners), "received_at": self.received_at}


@dataclass
class Base:
    """A SeaTable base: identity, whether its API goes through the gateway, its scripts and tables."""

    uuid: str  # 32 hex digits
    name: str
    use_api_gateway: bool
    workspace_id: int
    scripts: dict[str, str] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)
    calls: list[ApiCall] = field(default_factory=list)

    @property
    def uuid36(self) -> str:
        """The dashed spelling SeaTable uses in URLs and tokens."""
        return str(uuid.UUID(self.uuid))

    def table(self, name: str | None, table_id: str | None = None) -> Table:
        """A table by name, else by 4-character id (the client sends both when a name looks like an id)."""
        if name and name in self.tables:
            return self.tables[name]
        for candidate in (table_id, name):
            for table in self.tables.values():
                if candidate and table.table_id == candidate:
                    return table
        raise UnknownTable(name or table_id or "")

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the control API."""
        return {
            "uuid": self.uuid36,
            "name": self.name,
            "use_api_gateway": self.use_api_gateway,
            "workspace_id": self.workspace_id,
            "scripts": sorted(self.scripts),
            "tables": {name: table.select(limit=10**9) for name, table in self.tables.items()},
        }


@dataclass(frozen=True)
class TaskFile:
    """dtable-web's answer to the scheduler's task-file request."""

    script_url: str
    temp_api_token: str


class SeaTable:
    """What dtable-web, dtable-server and the API gateway know, for one stub process."""

    def __init__(self, config: StubConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        """Forget every base, limit, URL and notification, and put the clock back to real time."""
        with self._lock:
            self.bases: dict[str, Base] = {}
            self.user_limits: dict[str, int] = {}
            self.org_limits: dict[int, int] = {}
            self.default_scripts_running_limit = -1
            self.temp_api_token_ttl = TEMP_API_TOKEN_TTL
            self.access_token_ttl = ACCESS_TOKEN_TTL
            self._script_urls: dict[str, ScriptUrl] = {}
            self._notifications: list[Notification] = []
            self.clock.reset()

    # --- bases, scripts, tables, rows

    def add_base(
        self,
        dtable_uuid: str | None = None,
        name: str = "Stub Base",
        use_api_gateway: bool = True,
        workspace_id: int = 1,
        tables: tuple[str, ...] | list[str] = ("Table1",),
    ) -> Base:
        """Create (or replace) a base; a new one gets a random uuid. Tables are created empty."""
        key = normalize_uuid(dtable_uuid) if dtable_uuid else uuid.uuid4().hex
        base = Base(uuid=key, name=name, use_api_gateway=use_api_gateway, workspace_id=workspace_id)
        with self._lock:
            self.bases[key] = base
        for table_name in tables:
            self.add_table(key, table_name)
        return base

    def all_bases(self) -> list[Base]:
        """Every base, in creation order."""
        with self._lock:
            return list(self.bases.values())

    def base(self, dtable_uuid: str) -> Base:
        """The base with that uuid (either spelling), or UnknownBase."""
        with self._lock:
            base = self.bases.get(normalize_uuid(dtable_uuid))
        if base is None:
            raise UnknownBase(dtable_uuid)
        return base

    def add_script(self, dtable_uuid: str, name: str, content: str) -> None:
        """Store (or replace) a script in a base's script list."""
        base = self.base(dtable_uuid)
        with self._lock:
            base.scripts[name] = content

    def add_table(self, dtable_uuid: str, name: str) -> Table:
        """Add an empty table; the first gets id `0000` like a new base's Table1."""
        base = self.base(dtable_uuid)
        with self._lock:
            if name in base.tables:
                return base.tables[name]
            taken = {table.table_id for table in base.tables.values()}
            table_id = "0000"
            while table_id in taken:
                table_id = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(4))
            table = Table(name, table_id, self.clock.now)
            base.tables[name] = table
            return table

    def add_rows(self, dtable_uuid: str, table: str, rows: list[dict[str, Any]]) -> list[Row]:
        """Seed rows (e.g. the row a script gets as `context.current_row`); returns them with their ids."""
        return self.base(dtable_uuid).table(table).append_many(rows)

    def rows(self, dtable_uuid: str, table: str) -> list[Row]:
        """Every row of a table, in order (copies)."""
        return self.base(dtable_uuid).table(table).select(limit=10**9)

    def calls(self, dtable_uuid: str) -> list[ApiCall]:
        """Base API requests received for a base, oldest first."""
        base = self.base(dtable_uuid)
        with self._lock:
            return list(base.calls)

    def record_call(self, base: Base, api: str, operation: str, table: str | None) -> None:
        """Note one base API request (called by the resources)."""
        with self._lock:
            base.calls.append(ApiCall(api, operation, table))

    # --- running limits and notifications

    def set_scripts_running_limit(self, limit: int, *, username: str | None = None,
                                  org_id: int | None = None) -> None:
        """Monthly run limit for one user or one org; with neither, the default for everyone else."""
        with self._lock:
            if org_id is not None:
                self.org_limits[int(org_id)] = limit
            elif username is not None:
                self.user_limits[username] = limit
            else:
                self.default_scripts_running_limit = limit

    def scripts_running_limit(self, *, username: str | None = None, org_id: int | None = None) -> int:
        """What dtable-web answers for a user or org (-1: unlimited)."""
        with self._lock:
            if org_id is not None:
                return self.org_limits.get(org_id, self.default_scripts_running_limit)
            return self.user_limits.get(username or "", self.default_scripts_running_limit)

    def record_notification(self, org_ids: list[int], owners: list[str]) -> Notification:
        """Keep one scripts-exceeded notification."""
        notification = Notification(tuple(org_ids), tuple(owners), self.clock.now())
        with self._lock:
            self._notifications.append(notification)
        return notification

    @property
    def notifications(self) -> list[Notification]:
        """Notifications received, oldest first."""
        with self._lock:
            return list(self._notifications)

    # --- task files, one-time URLs, tokens

    def issue_task_file(self, dtable_uuid: str, script_name: str, prefix: str) -> TaskFile:
        """A fresh one-time script URL (under `prefix`, the caller's own address) and a temp_api_token."""
        base = self.base(dtable_uuid)
        if not script_name.endswith(".py"):
            raise InvalidScriptName(script_name)
        with self._lock:
            content = base.scripts.get(script_name)
            if content is None:
                raise UnknownScript(script_name)
            token = secrets.token_urlsafe(24)
            now = self.clock.now()
            url = f"{prefix}/seafhttp/files/{token}/{quote(script_name)}"
            self._script_urls[token] = ScriptUrl(token, base.uuid36, script_name, url, now, content)
            ttl = self.temp_api_token_ttl
        claims = {"dtable_uuid": base.uuid36, "app_name": script_name, "exp": int(now) + ttl, "username": ""}
        return TaskFile(url, tokens.encode(claims, self.config.secret))

    def fetch_script(self, token: str) -> str | None:
        """The script behind a one-time URL the first time, None ever after (and for unknown tokens)."""
        with self._lock:
            script_url = self._script_urls.get(token)
            if script_url is None:
                return None
            script_url.fetch_count += 1
            return script_url.content if script_url.fetch_count == 1 else None

    def script_urls(self, dtable_uuid: str | None = None, script_name: str | None = None) -> list[ScriptUrl]:
        """Issued one-time URLs with their fetch counts, oldest first, optionally for one base/script."""
        wanted = normalize_uuid(dtable_uuid) if dtable_uuid else None
        with self._lock:
            found = [copy.copy(url) for url in self._script_urls.values()]
        return [
            url for url in found
            if (wanted is None or normalize_uuid(url.dtable_uuid) == wanted)
            and (script_name is None or url.script_name == script_name)
        ]

    def app_access(self, temp_api_token: str, prefix: str) -> dict[str, Any]:
        """dtable-web's app-access-token answer for a valid temp_api_token; tokens.TokenError, UnknownBase."""
        claims = tokens.decode(temp_api_token, self.config.secret, self.clock.now(),
                               required=("dtable_uuid",))
        base = self.base(str(claims["dtable_uuid"]))
        app_name = str(claims.get("app_name") or "")
        access_claims = {
            "exp": int(self.clock.now()) + self.access_token_ttl,
            "dtable_uuid": base.uuid36,
            "username": str(claims.get("username") or ""),
            "permission": "rw",
            "app_name": app_name,
        }
        return {
            "app_name": app_name,
            "access_token": tokens.encode(access_claims, self.config.access_token_key),
            "dtable_uuid": base.uuid36,
            "dtable_server": f"{prefix}/dtable-server/",
            "dtable_socket": f"{prefix}/",
            "dtable_db": f"{prefix}/dtable-db/",
            "workspace_id": base.workspace_id,
            "dtable_name": base.name,
            "use_api_gateway": base.use_api_gateway,
        }

    def authorize(self, access_token: str, dtable_uuid: str) -> Base:
        """The base a row request may touch; raises tokens.TokenError (incl. a token for another base)."""
        claims = tokens.decode(access_token, self.config.access_token_key, self.clock.now(),
                               required=("dtable_uuid",))
        base = self.base(dtable_uuid)
        try:
            same_base = normalize_uuid(str(claims["dtable_uuid"])) == base.uuid
        except UnknownBase:
            same_base = False
        if not same_base:
            raise tokens.TokenInvalid("token is for another base")
        return base
