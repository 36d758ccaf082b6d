"""Pure logic: month windows, timestamp rendering, uuid spellings, auth comparison."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from scheduler.auth import TokenAuth
from scheduler.clock import Clock
from scheduler.resources.common import parse_id, same_uuid, uuid_forms
from scheduler.stats import is_group_owner, month_bounds


@pytest.mark.parametrize(
    ("month", "bounds"),
    [
        (date(2025, 1, 17), (date(2025, 1, 1), date(2025, 2, 1))),
        (date(2025, 11, 30), (date(2025, 11, 1), date(2025, 12, 1))),
        (date(2025, 12, 31), (date(2025, 12, 1), date(2026, 1, 1))),
    ],
)
def test_month_bounds(month: date, bounds: tuple[date, date]) -> None:
    assert month_bounds(month) == bounds


def test_clock_renders_local_iso_with_offset_whole_seconds() -> None:
    clock = Clock(ZoneInfo("Europe/Berlin"))
    assert clock.iso(datetime(2024, 1, 15, 10, 0, 0, 999_999)) == "2024-01-15T10:00:00+01:00"
    assert clock.iso(datetime(2024, 7, 15, 10, 0, 0)) == "2024-07-15T10:00:00+02:00"
    assert clock.iso("2024-07-15 10:00:00.250000") == "2024-07-15T10:00:00+02:00"
    assert clock.iso(None) is None
    assert clock.from_epoch(0) == datetime(1970, 1, 1, 1, 0, 0)
    assert clock.to_local(datetime.fromisoformat("2024-07-15T08:00:00+00:00")) == datetime(2024, 7, 15, 10, 0)


def test_uuid_forms() -> None:
    dashed = "0B5A4F2E-5D7C-4C6F-9A47-1E9D8B9F1A11"
    forms = uuid_forms(dashed)
    assert forms is not None and dashed in forms
    assert "0b5a4f2e-5d7c-4c6f-9a47-1e9d8b9f1a11" in forms and "0b5a4f2e5d7c4c6f9a471e9d8b9f1a11" in forms
    for bad in (
        "",
        "x",
        "0b5a4f2e5d7c4c6f9a471e9d8b9f1a11\n",
        "{0b5a4f2e-5d7c-4c6f-9a47-1e9d8b9f1a11}",
        "urn:uuid:0b5a4f2e5d7c4c6f9a471e9d8b9f1a11",
    ):
        assert uuid_forms(bad) is None
    assert same_uuid(dashed, "0b5a4f2e5d7c4c6f9a471e9d8b9f1a11")


def test_parse_id() -> None:
    assert parse_id("42") == 42
    for bad in ("0", "-1", "1e3", "4294967296", "99999999999", "", " 1", "\u0661", "42\n"):
        assert parse_id(bad) is None, bad


def test_token_auth() -> None:
    auth = TokenAuth("s3cret")
    assert auth.accepts("Token s3cret") and auth.accepts("Bearer s3cret")
    for header in (None, "", "Token", "Token s3cret ", "token s3cret", "Token S3CRET", "Bearer\ts3cret", "Tökén"):
        assert not auth.accepts(header), header
    with pytest.raises(ValueError):
        TokenAuth("")


def test_group_owner() -> None:
    assert is_group_owner("12@seafile_group") and not is_group_owner("alice@auth.local")
    assert not is_group_owner(None)
