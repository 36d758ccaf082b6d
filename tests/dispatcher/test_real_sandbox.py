"""The whole path with the REAL sandbox (rootless Podman) and the scheduler API under gunicorn."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from scheduler.db import Store
from tests.dispatcher.conftest import DispatcherProcess, SeaTableStub, enqueue, row, wait_for
from tests.scheduler.conftest import RunningServer


@pytest.mark.parametrize("backend", ["mariadb"], indirect=True)
def test_a_run_goes_pending_running_finished_with_its_output(
    backend: str,
    db_env: dict[str, str],
    store: Store,
    seatable: SeaTableStub,
    serve: Callable[[dict[str, str]], RunningServer],
    sandbox_factory: Any,
    dispatchers: Callable[..., DispatcherProcess],
) -> None:
    server = serve({**db_env, "SEATABLE_SERVER_URL": seatable.url})
    sandbox = sandbox_factory(PYTHON_SCHEDULER_URL=server.url)
    # Long enough that the 20 ms polls below see the running state between pending and finished.
    seatable.server.seatable.add_script(seatable.base, "slow.py", "import time\nprint('slow hello')\ntime.sleep(1.5)\n")
    [run_id] = enqueue(store, seatable.base, 1, script_name="slow.py")
    assert row(store, run_id)["state"] == "pending"
    dispatchers(
        {
            **db_env,
            "SEATABLE_SERVER_URL": seatable.url,
            "PYTHON_SANDBOX_URLS": sandbox.url,
            "PYTHON_SANDBOX_AUTH_TOKEN": sandbox.token,
        }
    )
    states: list[str] = []

    def finished() -> bool:
        state = row(store, run_id)["state"]
        if not states or states[-1] != state:
            states.append(state)
        return state == "finished"

    wait_for(finished, 120, "the run to finish", interval=0.02)
    done = row(store, run_id)
    assert done["success"], done["output"]
    assert "slow hello" in done["output"]
    assert done["started_at"] is not None and done["sandbox_node"] == sandbox.url
    assert states == ["pending", "running", "finished"]
