"""A ContainerDriver the foundation tests call directly (no HTTP), as the sandbox would."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox.driver import ContainerDriver, Job, RunResult
from sandbox.isolation import probe
from sandbox.limits import RunnerLimits
from sandbox.podman_api import PodmanAPI
from sandbox.seccomp_profile import write_profile

RunFn = Callable[..., RunResult]


@pytest.fixture(scope="session")
def driver(podman: PodmanAPI, runner_image: str) -> Iterator[ContainerDriver]:
    # Podman (the sandbox user) reads the profile: pytest's own temp dirs are root-only.
    state = Path(tempfile.mkdtemp(prefix="seccomp-"))
    state.chmod(0o755)
    isolation = probe(podman.client.info(), owner="foundation-tests", state_dir=state)
    yield ContainerDriver(
        api=podman, image=runner_image,
        limits=RunnerLimits(memory=512 << 20, pids=256, cpus=0, timeout=30, tmpfs_size=100 << 20),
        enforcement=isolation.enforcement, node="foundation-tests", output_limit=1_000_000,
        seccomp_profile=str(write_profile(state)), identities=isolation.identities, cgroups=isolation.cgroups,
    )
    shutil.rmtree(state, ignore_errors=True)  # every run left one behind in /tmp


@pytest.fixture
def run_script(driver: ContainerDriver) -> RunFn:
    """Run one script in a fresh runner and remove the runner."""

    def run(script: bytes | str, input: str = "", env: dict[str, str] | None = None, timeout: int = 30) -> RunResult:
        containers: list[str] = []
        result = driver.run(Job(1, script, input, env or {}), timeout, containers.append,
                            lambda _started: None)
        driver.cleanup(containers[0])
        return result

    return run
