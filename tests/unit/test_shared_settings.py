"""Settings both services read: one default each (issue 15, item 10), and the runners' time zone (item 5)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import sandbox.config
import scheduler.config
from sandbox.config import SandboxConfig
from sandbox.timezone import host_time_zone

TOKENS = {"PYTHON_SANDBOX_AUTH_TOKEN": "a", "PYTHON_SCHEDULER_AUTH_TOKEN": "b", "HOME": "/home/x"}


def _default(raw: str) -> str:
    return "" if raw == "(required)" else raw  # the scheduler lists a required secret as empty


def test_every_variable_both_services_read_has_one_default() -> None:
    scheduler_defaults = {v[0]: _default(v[1]) for v in scheduler.config.VARIABLES}
    sandbox_defaults = {v[0]: _default(v[1]) for v in sandbox.config.VARIABLES}
    shared = scheduler_defaults.keys() & sandbox_defaults.keys()
    assert {"PYTHON_PROCESS_TIMEOUT", "PYTHON_SCHEDULER_URL", "TIME_ZONE"} <= shared
    assert {name: scheduler_defaults[name] for name in shared} == {name: sandbox_defaults[name] for name in shared}
    # and what the code does without the variable, not only what the tables say
    sandbox_config = SandboxConfig.from_env(TOKENS)
    scheduler_config = scheduler.config.Config.from_env({})
    assert sandbox_config.timeout == scheduler_config.process_timeout == 60
    assert sandbox_config.scheduler_url == scheduler_config.scheduler_url == "http://127.0.0.1:5055"


def zone_tree(tmp_path: Path, *zones: str) -> Path:
    """A root with etc/ and the given zones' files under usr/share/zoneinfo."""
    (tmp_path / "etc").mkdir()
    for zone in zones:
        path = tmp_path / "usr/share/zoneinfo" / zone
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"TZif2")
    return tmp_path


@pytest.mark.parametrize("target", [
    "/usr/share/zoneinfo/Asia/Kolkata",  # systemd's timedatectl, Debian
    "../usr/share/zoneinfo/Asia/Kolkata",  # relative, as RHEL and Alpine write it
    "/usr/share/zoneinfo/posix/Asia/Kolkata",  # tzdata's variant trees hold the same names
    "/usr/share/zoneinfo/right/Asia/Kolkata",
])  # fmt: skip
def test_host_zone_from_the_localtime_link(tmp_path: Path, target: str) -> None:
    root = zone_tree(tmp_path, "Asia/Kolkata", "Etc/UTC")
    (root / "etc/localtime").symlink_to(target)
    (root / "etc/timezone").write_text("Etc/UTC\n")  # the link wins: it is what the C library reads
    assert host_time_zone(root) == "Asia/Kolkata"


def test_host_zone_from_etc_timezone_when_localtime_is_a_copy(tmp_path: Path) -> None:
    root = zone_tree(tmp_path, "America/St_Johns")
    (root / "etc/localtime").write_bytes(b"TZif2 copied")
    (root / "etc/timezone").write_text("America/St_Johns\n")
    assert host_time_zone(root) == "America/St_Johns"


@pytest.mark.parametrize(("link", "timezone_file"), [
    (None, None),  # a minimal host or container without either
    ("/usr/share/zoneinfo/Mars/Olympus", None),  # not a zone this host's tzdata knows
    ("/etc/alternatives/localtime", None),  # a link that names no zone
    (None, "../../../etc/passwd\n"),  # never a path out of zoneinfo
    (None, "\n"),
    (None, "Etc/GMT+5 extra words\n"),
])  # fmt: skip
def test_host_zone_falls_back_to_utc(tmp_path: Path, link: str | None, timezone_file: str | None) -> None:
    root = zone_tree(tmp_path, "Etc/GMT+5", "Etc/UTC")
    (root / "etc/passwd").write_text("root:x:0:0\n")
    if link is not None:
        (root / "etc/localtime").symlink_to(link)
    if timezone_file is not None:
        (root / "etc/timezone").write_text(timezone_file)
    assert host_time_zone(root) == "UTC"


def test_config_passes_time_zone_or_the_hosts_and_refuses_a_path() -> None:
    assert SandboxConfig.from_env({**TOKENS, "TIME_ZONE": "Europe/Berlin"}).time_zone == "Europe/Berlin"
    assert SandboxConfig.from_env(TOKENS).time_zone == host_time_zone(Path("/"))
    if os.path.islink("/etc/localtime"):  # this host's own zone, as upstream's bind mount would have shown it
        assert os.readlink("/etc/localtime").endswith("/" + host_time_zone(Path("/")))
    for bad in ("../../etc/passwd", "/etc/localtime", "Europe/Berlin;rm", "Europe//Berlin"):
        with pytest.raises(ValueError, match="TIME_ZONE"):
            SandboxConfig.from_env({**TOKENS, "TIME_ZONE": bad})
