"""The runners' time zone: TIME_ZONE, or else the host's zone, as upstream's runners see it.

Upstream bind-mounts the host's /etc/localtime into every runner when TIME_ZONE is unset. Nothing of the host
is mounted into a runner here, so the sandbox reads the zone's name once at start (the target of
/etc/localtime's link, else /etc/timezone) and passes it as TZ; the runner image has tzdata.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

FALLBACK = "UTC"
ZONEINFO = Path("usr/share/zoneinfo")
_NAME = re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*\Z")  # Area/Location, Etc/GMT+5, UTC; no "..", no "/" first
_VARIANTS = ("posix/", "right/")  # tzdata's alternative trees hold the same names


def is_zone_name(name: str) -> bool:
    return bool(_NAME.match(name)) and len(name) <= 64


def host_time_zone(root: Path = Path("/")) -> str:
    """The host's zone name, if it names a zone the host's tzdata has; UTC otherwise (as a host without one)."""
    for name in (_linked_zone(root), _timezone_file(root)):
        if name and is_zone_name(name) and (root / ZONEINFO / name).is_file():
            return name
    return FALLBACK


def _linked_zone(root: Path) -> str | None:
    """"Europe/Berlin" from /etc/localtime -> [../]usr/share/zoneinfo/Europe/Berlin (systemd, Debian, RHEL)."""
    try:
        target = os.readlink(root / "etc" / "localtime")
    except OSError:  # missing, or a copy of the zone file rather than a link: no name to read
        return None
    _, found, name = target.partition("zoneinfo/")
    if not found:
        return None
    for variant in _VARIANTS:
        name = name.removeprefix(variant)
    return name


def _timezone_file(root: Path) -> str | None:
    """Debian's /etc/timezone: the name on its first line."""
    try:
        lines = (root / "etc" / "timezone").read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        return None
    return lines[0].strip() if lines else None
