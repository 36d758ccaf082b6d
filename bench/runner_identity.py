"""What a host identity and cgroups of its own cost a runner: cold start and removal, before and after.

Run as root: `./dev bench runner_identity [--runs N]`. The same driver calls, interleaved, on the same
image: "shared uid" is how runners started before issue 13 (Podman's default rootless mapping, every
runner container uid 1000, no cgroups of its own); "own uid + cgroups" is what the sandbox does now
(one fixed id mapping, a claimed uid per runner, and on cgroup v1 hosts the delegated per-run cgroups
placed by the runtime wrapper). Cold: create, start, job, result of `print('hi')`; removal: remove
the container (and its cgroups, uid claim); warm: job to result on a runner started and ready beforehand
(what the warm pool serves; the pool pays create, start and removal off the request path).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.report import machine, median, percentile, update_section
from sandbox.driver import ContainerDriver, Job
from sandbox.host import configured_user, lookup_user
from sandbox.image import default_image
from sandbox.isolation import probe
from sandbox.limits import RunnerLimits, detect
from sandbox.podman_api import PodmanAPI
from sandbox.seccomp_profile import write_profile


def drivers(api: PodmanAPI, state: Path) -> dict[str, ContainerDriver]:
    info = api.client.info()
    isolation = probe(info, owner="bench-runner-identity", state_dir=state)
    profile = str(write_profile(state))
    limits = RunnerLimits(memory=512 << 20, pids=256, cpus=0, timeout=30, tmpfs_size=100 << 20)
    common = {"api": api, "image": default_image(), "limits": limits, "node": "bench-runner-identity",
              "output_limit": 100_000, "seccomp_profile": profile}
    return {
        "shared uid": ContainerDriver(enforcement=detect(info), **common),  # type: ignore[arg-type]
        "own uid": ContainerDriver(enforcement=detect(info), identities=isolation.identities,
                                   **common),  # type: ignore[arg-type]
        f"own uid + {isolation.enforcement.mechanism}": ContainerDriver(
            enforcement=isolation.enforcement, identities=isolation.identities, cgroups=isolation.cgroups,
            **common),  # type: ignore[arg-type]
    }


def one_run(driver: ContainerDriver) -> tuple[float, float, float]:
    """Cold run, its removal, then a warm run (job to result on a runner started beforehand)."""
    containers: list[str] = []
    started = time.perf_counter()
    result = driver.run(Job(1, "print('hi')", "", {}), 30, containers.append, lambda _t: None)
    cold = time.perf_counter() - started
    assert result.output == "hi\n", result
    started = time.perf_counter()
    driver.cleanup(containers[0])
    removal = time.perf_counter() - started
    runner = driver.prepare("bench")
    deadline = time.monotonic() + 30
    while not runner.check_ready() and time.monotonic() < deadline:
        time.sleep(0.005)
    started = time.perf_counter()
    result = driver.run(Job(2, "print('hi')", "", {}), 30, lambda _c: None, lambda _t: None, runner=runner)
    warm = time.perf_counter() - started
    assert result.output == "hi\n", result
    driver.cleanup(runner.container)
    return cold * 1000, removal * 1000, warm * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    user = lookup_user(configured_user())
    api = PodmanAPI(user.socket_url)
    with tempfile.TemporaryDirectory(prefix="bench-identity-") as state:
        Path(state).chmod(0o755)
        ways = drivers(api, Path(state))
        for driver in ways.values():
            one_run(driver)  # warm-up: page cache, the mapped image copy
        samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ways}
        for _ in range(args.runs):
            for name, driver in ways.items():
                samples[name].append(one_run(driver))
    api.close()
    base = median([cold for cold, _, _ in samples["shared uid"]])
    rows = ["| runner | cold p50 | cold p90 | removal p50 | warm p50 | warm p90 | cold p50 / shared |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, values in samples.items():
        colds, removals, warms = ([v[i] for v in values] for i in range(3))
        rows.append(f"| {name} | {median(colds):.0f} ms | {percentile(colds, 90):.0f} ms | "
                    f"{median(removals):.0f} ms | {median(warms):.0f} ms | {percentile(warms, 90):.0f} ms | "
                    f"{median(colds) / base:.2f}x |")
    body = (f"{machine()}. User `{user.name}`, image `{default_image()}`.\n"
            f"Command: `./dev bench runner_identity --runs {args.runs}`: {args.runs} cold and warm runs of "
            "`print('hi')` each way, interleaved, through the driver (no HTTP). The one id-shifted copy of the "
            "image that the fixed mapping needs is made once by `build-runner` (not measured here).\n\n"
            + "\n".join(rows))
    update_section("Runner identity and per-run cgroups: start cost", body)
    print(body)
    return 0
