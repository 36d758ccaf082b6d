"""What the read-only mount of the sandbox's entrypoint costs a runner's start.

Run as root: `./dev bench runner_mount [--runs N]`. Alternates, on the same image and options, the create, start
and exit of a runner container running `python3 -I -c pass` with and without the extra read-only bind mount of the
trusted entrypoint's directory that every runner now gets, through the sandbox user's Podman API. Prints medians.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.report import median
from sandbox.host import configured_user, lookup_user
from sandbox.image import RUNNER_FILES, default_image, runner_files_dir
from sandbox.podman_api import PodmanAPI

LABEL = "io.seatable.bench-runner-mount"


def spec(image: str, mounted: bool) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                                     "options": ["rw", "nosuid", "nodev", "size=104857600"]}]
    if mounted:
        mounts.append({"destination": RUNNER_FILES, "type": "bind", "source": str(runner_files_dir()),
                       "options": ["ro", "rbind", "nosuid", "nodev", "noexec"]})
    return {"image": image, "entrypoint": ["python3", "-I", "-c", "pass"], "user": "1000:1000",
            "read_only_filesystem": True, "mounts": mounts, "cap_drop": ["ALL"], "no_new_privileges": True,
            "netns": {"nsmode": "none"}, "log_configuration": {"driver": "none"}, "labels": {LABEL: "1"}}


def one(api: PodmanAPI, image: str, mounted: bool) -> float:
    started = time.perf_counter()
    created = api.create(spec(image, mounted))
    api.start(created.id)
    status = api.wait(created.id)
    elapsed = time.perf_counter() - started
    api.remove(created.id)
    assert status == 0, status
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    api = PodmanAPI(lookup_user(configured_user()).socket_url)
    image = default_image()
    times: dict[bool, list[float]] = {False: [], True: []}
    try:
        one(api, image, True)  # warm the page cache
        for _ in range(args.runs):
            for with_mount in (False, True):
                times[with_mount].append(one(api, image, with_mount))
    finally:
        api.close()
    plain, mounted = median(times[False]) * 1000, median(times[True]) * 1000
    print(f"runner create+start+exit, median of {args.runs}: without the mount {plain:.1f} ms, "
          f"with it {mounted:.1f} ms, difference {mounted - plain:+.1f} ms")
    return 0
