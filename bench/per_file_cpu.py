"""A pytest plugin: the whole machine's busy CPU and the wall time of each test file, for `bench suite_cpu --by-file`.

Loaded with `-p bench.per_file_cpu` into a run with one worker (`-n 1`), so that what the machine does while a test
runs is that test's (its fixtures' set-up counts to the first test that asks for them, their teardown to the last).
Writes JSON to $SUITE_CPU_BY_FILE at the end of the session: {file: [cpu_seconds, wall_seconds, tests]}.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from bench.cpu_split import busy_seconds

ENV = "SUITE_CPU_BY_FILE"
_seen: dict[str, list[float]] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, None]:
    busy, started = busy_seconds(), time.monotonic()
    yield
    row = _seen.setdefault(item.nodeid.split("::")[0], [0.0, 0.0, 0])
    row[0] += busy_seconds() - busy
    row[1] += time.monotonic() - started
    row[2] += 1


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get(ENV)
    if target and _seen:  # each xdist worker (one here) and the controller, which ran no test, call this
        Path(target).write_text(json.dumps(_seen))
