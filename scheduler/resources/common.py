"""What every resource shares: the error type, auth, bounded JSON bodies and query parameter parsing.

Errors carry either a text body (upstream answers most errors in plain words) or a JSON body (upstream's
/admin/ endpoints answer {"error": ...}); `app.py` turns them into responses, never into tracebacks.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import falcon
import jsonschema

from scheduler import texts
from scheduler.auth import TokenAuth
from scheduler.clock import Clock

TEXT_TYPE = "text/html; charset=utf-8"  # what upstream's Flask sends for plain-word answers
MAX_ID = 2**31 - 1  # int(11) columns
MAX_PER_PAGE = 1000  # upstream has no bound on the lenient routes; a larger per_page is cut to this
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\Z")
_DATE_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_ID_RE = re.compile(r"^[0-9]{1,10}\Z")
_INT_RE = re.compile(r"^-?[0-9]{1,12}\Z")


class ApiError(Exception):
    def __init__(self, status: int, body: str | dict[str, Any]) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


def bad(body: str | dict[str, Any]) -> ApiError:
    return ApiError(400, body)


def admin_error(message: str) -> ApiError:
    return ApiError(400, {"error": message})


def render_error(resp: falcon.Response, error: ApiError) -> None:
    resp.status = falcon.code_to_http_status(error.status)
    if isinstance(error.body, dict):
        resp.media = error.body
    else:
        resp.content_type = TEXT_TYPE
        resp.text = error.body


@dataclass(frozen=True)
class Context:
    """Collaborators handed to every resource."""

    auth: TokenAuth
    clock: Clock
    max_body_bytes: int
    accept_unauthenticated_callbacks: bool
    wake_dispatchers: Callable[[], None] = lambda: None  # a hint: a run was created or a slot freed

    def require_auth(self, req: falcon.Request, forbidden_text: str = texts.FORBIDDEN) -> None:
        if not self.auth.accepts(req.get_header("Authorization")):
            raise ApiError(403, forbidden_text)

    def read_json_object(self, req: falcon.Request, budget: BodyBudget | None = None,
                         salvage_text: bool = False) -> dict[str, Any]:
        """The body as a JSON object within the route's budget; 413 above it, 400 "Bad request" otherwise wrong.

        A lone surrogate (only a \\uD8xx escape makes one) cannot be stored: 400, or with `salvage_text` (a
        result must never be refused) replaced by U+FFFD."""
        limit = min(self.max_body_bytes, budget.bytes) if budget else self.max_body_bytes
        length = req.content_length
        if length is not None and length > limit:
            raise ApiError(413, texts.BODY_TOO_LARGE)
        raw = req.bounded_stream.read(limit + 1)
        if len(raw) > limit:
            raise ApiError(413, texts.BODY_TOO_LARGE)
        if budget is not None and not within_values(raw, budget.values):
            raise ApiError(413, texts.BODY_TOO_MANY_VALUES)
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise bad(texts.BAD_REQUEST) from None
        if not isinstance(data, dict):
            raise bad(texts.BAD_REQUEST)
        if _SURROGATE_ESCAPE.search(raw) and not without_lone_surrogates(data, salvage_text):
            raise bad(texts.PARAMETERS_INVALID)
        return data


@dataclass(frozen=True)
class BodyBudget:
    """What one route's body may cost before it is parsed: its bytes and its JSON values.

    Bytes alone do not bound memory: `[{},{},...]` turns each 3 bytes into a ~64-byte dict (8 MiB became
    ~200 MiB of Python objects). Counting values first (C-speed byte counts, and an exact count that skips
    string contents only when that bound is exceeded) keeps a parse to a few times the body's size."""

    bytes: int
    values: int


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def within_values(raw: bytes, values: int) -> bool:
    """Whether the JSON text holds at most `values` values (objects, arrays, keys, scalars)."""
    def bound(text: bytes) -> int:
        return text.count(b",") + text.count(b":") + text.count(b"[") + text.count(b"{") + 1

    # Separators inside strings count too, so this is an upper bound; only above the budget are strings cut out.
    return bound(raw) <= values or bound(_STRING.sub(b"", raw)) <= values


def without_lone_surrogates(data: dict[str, Any], replace: bool) -> bool:
    """True when no string in `data` holds a lone surrogate (after replacing them, with `replace`)."""
    pending: list[Any] = [data]
    while pending:
        node = pending.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(items):
            if isinstance(key, str) and _LONE_SURROGATE.search(key):
                if not replace:
                    return False
                node[_LONE_SURROGATE.sub("\ufffd", key)] = node.pop(key)
                key = _LONE_SURROGATE.sub("\ufffd", key)
            if isinstance(value, str) and _LONE_SURROGATE.search(value):
                if not replace:
                    return False
                node[key] = _LONE_SURROGATE.sub("\ufffd", value)
            elif isinstance(value, (dict, list)):
                pending.append(value)
    return True


def validate(validator: jsonschema.protocols.Validator, data: dict[str, Any]) -> None:
    if not validator.is_valid(data):
        raise bad(texts.PARAMETERS_INVALID)


def param(req: falcon.Request, name: str) -> str | None:
    """A query parameter, with blank treated as absent (as Flask's `if value:` did upstream)."""
    value = req.get_param(name)
    return value if value else None


def int_param(req: falcon.Request, name: str, default: int, error: ApiError, lo: int = 1, hi: int = MAX_ID) -> int:
    raw = param(req, name)
    if raw is None:
        return default
    if not _INT_RE.match(raw.strip()):
        raise error
    value = int(raw.strip())
    if not lo <= value <= hi:
        raise error
    return value


def lenient_page_param(req: falcon.Request, name: str, default: int, cap: int = MAX_ID) -> int:
    """page/per_page as upstream's Flask reads them on the routes dtable-web does not check: a value that is
    not a whole number >= 1 falls back to the default (dtable-web would show a 400 as a 500 page), and one
    above `cap` is cut to it instead of being refused."""
    raw = param(req, name)
    if raw is None or not _INT_RE.match(raw.strip()):
        return default
    value = int(raw.strip())
    return default if value < 1 else min(value, cap)


def parse_id(raw: str) -> int | None:
    if not _ID_RE.match(raw):
        return None
    value = int(raw)
    return value if 0 < value <= MAX_ID else None


def uuid_forms(value: str) -> tuple[str, ...] | None:
    """All spellings a base uuid may be stored under (with and without dashes); None if not a uuid."""
    if not _UUID_RE.match(value):
        return None
    parsed = uuid.UUID(value)
    return tuple(dict.fromkeys((value, str(parsed), parsed.hex)))


def same_uuid(a: str, b: str) -> bool:
    return a.replace("-", "").lower() == b.replace("-", "").lower()


def parse_month(raw: str | None, today: date) -> date:
    if raw is None:
        return today.replace(day=1)
    try:
        return datetime.strptime(raw, "%Y-%m").date()
    except ValueError:
        raise bad(texts.MONTH_INVALID) from None


def parse_bound(raw: str | None, clock: Clock, is_end: bool, message: str) -> tuple[datetime | None, bool]:
    """A start/end filter: a date (an end date covers its whole day) or an ISO datetime.

    Returns the bound as naive local time and whether it is inclusive.
    """
    if raw is None:
        return None, True
    try:
        if _DATE_RE.match(raw):
            day = datetime.strptime(raw, "%Y-%m-%d")
            return (day + timedelta(days=1), False) if is_end else (day, True)
        return clock.to_local(datetime.fromisoformat(raw)), True
    except (ValueError, OverflowError):
        raise admin_error(message) from None
