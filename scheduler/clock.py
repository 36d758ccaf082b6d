"""Wall-clock time as upstream stores it: naive local time in the database, ISO with offset on the wire."""

from __future__ import annotations

import os
from datetime import date, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def zone(name: str = "") -> tzinfo:
    """The configured zone, else TZ, else the host's /etc/localtime (with its DST rules)."""
    for candidate in (name, os.environ.get("TZ", "")):
        if candidate:
            try:
                return ZoneInfo(candidate.lstrip(":"))
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {candidate!r}") from None
    try:
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f)
    except OSError:
        tz = datetime.now().astimezone().tzinfo
        assert tz is not None
        return tz


class Clock:
    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz

    def now(self) -> datetime:
        """Naive local time, the form upstream's columns hold."""
        return datetime.now(self.tz).replace(tzinfo=None)

    def today(self) -> date:
        return self.now().date()

    def from_epoch(self, seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, self.tz).replace(tzinfo=None)

    def to_local(self, value: datetime) -> datetime:
        """An aware datetime (e.g. a query parameter with offset) as naive local time."""
        if value.tzinfo is None:
            return value
        return value.astimezone(self.tz).replace(tzinfo=None)

    def iso(self, value: datetime | str | None) -> str | None:
        """Local ISO 8601 with offset, whole seconds; None stays None."""
        if value is None:
            return None
        if isinstance(value, str):  # SQLite hands back text from raw queries
            value = datetime.fromisoformat(value)
        return value.replace(microsecond=0, tzinfo=self.tz).isoformat()
