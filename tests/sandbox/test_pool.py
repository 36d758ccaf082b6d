"""The warm pool: pre-started runners serve runs, refill in the background, give way to memory."""

from __future__ import annotations

import time
from typing import Any

from tests.support.podman import CallbackReceiver, SandboxProcess


def wait_ready(sandbox: SandboxProcess, count: int) -> dict[str, Any]:
    """Until `count` pooled runners have said they wait for a job (pre-imports done)."""
    deadline = time.monotonic() + 30
    while (health := sandbox.health()["warm_pool"])["ready"] < count:
        assert time.monotonic() < deadline, health
        time.sleep(0.05)
    return health


def test_pool_serves_runs_and_refills(sandbox: SandboxProcess, receiver: CallbackReceiver) -> None:
    health = wait_ready(sandbox, 2)
    assert health["size"] == 2 and health["idle"] == 2
    assert health["preimport"] == "seatable_api,pandas"
    assert health["idle_runner_preimports"] == ["pandas,seatable_api"] * 2
    # /health's RSS figures are sampled every 5 s, off the request path: the first sample after the pool got
    # ready holds both runners with their imports (one taken before could show a runner still starting).
    deadline = time.monotonic() + 15
    while not (len(rss := sandbox.health()["warm_pool"]["idle_runner_rss_bytes"]) == 2
               and all(isinstance(size, int) and size > 10 << 20 for size in rss)):
        assert time.monotonic() < deadline, rss
        time.sleep(0.2)
    script = ("import sys\nfrom seatable_api import context\n"
              "print(context.current_table, 'pandas' in sys.modules)\n")
    # The first run finds only runners with everything; the runner made in its place pre-imports what
    # it needed (seatable_api, not pandas), and the next runs of the same kind take that one.
    for script_id, pandas_loaded in ((301, True), (302, False), (303, False)):
        assert sandbox.run(script_id, script, context={"table": f"T{script_id}"}).status_code == 202
        assert receiver.result(script_id)["output"] == f"T{script_id} {pandas_loaded}\n"
        health = wait_ready(sandbox, 2)
    assert sorted(health["idle_runner_preimports"]) == ["pandas,seatable_api", "seatable_api"]
    # A pandas script takes the runner that has it loaded.
    assert sandbox.run(304, "import pandas, sys\nprint(sys.modules['pandas'].__name__)\n").status_code == 202
    assert receiver.result(304)["output"] == "pandas\n"
    health = wait_ready(sandbox, 2)
    assert health["served"] == 4 and health["misses"] == 0
    assert sorted(health["idle_runner_preimports"]) == ["pandas", "seatable_api"]


def test_pool_empties_when_memory_is_short(sandbox_factory: Any, receiver: CallbackReceiver) -> None:
    sandbox = sandbox_factory(PYTHON_SANDBOX_WARM_POOL="2", PYTHON_SANDBOX_POOL_MIN_AVAILABLE="100000g")
    health = sandbox.health()["warm_pool"]
    assert health["target"] == 0 and health["idle"] == 0
    assert sandbox.run(310, "print('cold path')").status_code == 202
    assert receiver.result(310)["output"] == "cold path\n"
    assert sandbox.health()["warm_pool"]["misses"] == 1


def test_a_pooled_runner_carries_no_job_data(sandbox: SandboxProcess, podman: Any) -> None:
    """Idle runners are created before any job: their config holds no token or script."""
    from sandbox.driver import LABEL

    idle = podman.labelled(f"{LABEL}={sandbox.env['PYTHON_SANDBOX_NODE_NAME']}")
    assert len(idle) == 2
    for entry in idle:
        config = str(podman.inspect(entry["Id"]))
        assert "api_token" not in config and "dtable_web_url" not in config


def test_pre_imports_that_do_not_fit_the_memory_limit_are_dropped(sandbox_factory: Any,
                                                                   receiver: CallbackReceiver) -> None:
    """A pool whose pre-imports end every runner at its limit falls back to bare runners, and says why."""
    sandbox = sandbox_factory(PYTHON_RUNNER_CONTAINER_MEMORY="40m", PYTHON_SANDBOX_WARM_POOL="1",
                              PYTHON_SANDBOX_PREIMPORT="pandas")  # the factory waits for a ready runner
    pool = sandbox.health()["warm_pool"]
    assert pool["preimport_stopped"] is not None and "pandas" in pool["preimport_stopped"], pool
    assert pool["ended_before_ready"] >= 3 and pool["idle_runner_preimports"] == [""]
    assert "its runners no longer pre-import anything" in sandbox.log()
    assert sandbox.run(320, "import sys\nprint('pandas' in sys.modules)\n").status_code == 202
    assert receiver.result(320)["output"] == "False\n"
    assert sandbox.health()["warm_pool"]["served"] == 1
