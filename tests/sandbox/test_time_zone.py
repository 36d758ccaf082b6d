"""Scripts run in TIME_ZONE, or in the host's zone when it is unset, as upstream's runners do (issue 15, item 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandbox.timezone import host_time_zone
from tests.support.podman import CallbackReceiver

# What scripts see: the zone's name and offset through time and datetime, and the TZ variable.
SCRIPT = """\
import datetime, os, time
now = datetime.datetime.now().astimezone()
print(os.environ.get("TZ"), time.strftime("%Z"), now.utcoffset().total_seconds(), now.tzname())
"""


def zone_seen(sandbox_factory: Any, receiver: CallbackReceiver, script_id: int, **env: str) -> list[str]:
    sandbox = sandbox_factory(**env)
    assert sandbox.run(script_id, SCRIPT).status_code == 202
    result = receiver.result(script_id)
    assert result["success"] is True, result
    return str(result["output"]).split()


@pytest.mark.parametrize("pool", ["0", "1"])  # cold runner, and a warm one started before the job arrived
def test_a_real_runner_runs_in_time_zone(sandbox_factory: Any, receiver: CallbackReceiver, pool: str) -> None:
    # Asia/Kolkata: +05:30 all year, so the check does not depend on the date
    seen = zone_seen(sandbox_factory, receiver, 501 + int(pool), TIME_ZONE="Asia/Kolkata",
                     PYTHON_SANDBOX_WARM_POOL=pool)  # fmt: skip
    assert seen == ["Asia/Kolkata", "IST", "19800.0", "IST"]


def test_without_time_zone_a_real_runner_gets_the_hosts_zone(
    sandbox_factory: Any, receiver: CallbackReceiver
) -> None:
    host = host_time_zone(Path("/"))
    seen = zone_seen(sandbox_factory, receiver, 510)
    assert seen[0] == host
