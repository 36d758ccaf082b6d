"""Image sizes: the runner against an alpine-based equivalent, and what the scheduler and sandbox images add.

Measured as `./dev bench image_sizes` measures (bench/image_sizes.py says how the alpine size is estimated); the
bench writes BENCHMARKS.md, this test only checks the limits and the section's format (no test writes the repo).
"""

from __future__ import annotations

import pytest

from bench.image_sizes import LIMIT, RUNNER, measure, render
from tests.deployment.images import Podman


@pytest.fixture(scope="module")
def podman(compose_host: Podman) -> Podman:
    return compose_host


@pytest.mark.timeout(5 * 900 + 120)  # builds (or finds cached) the four compose images, the runner image and its rootfs
def test_image_sizes_and_runner_against_alpine(podman: Podman) -> None:
    result = measure(podman)
    # The trimmed runner still runs what scripts import.
    assert result.runner_check == "ok"
    section = render(result)
    print("\n" + section)
    assert "| Image | Size | Own layers |" in section and f"| {RUNNER} | {result.ours_mb:.0f} MB | |" in section
    ours, alpine = result.ours_mb, result.alpine_mb
    assert ours <= alpine * LIMIT, f"runner {ours:.0f} MB > {LIMIT} x alpine estimate {alpine:.0f} MB"
    for name in ("scheduler (Containerfile.scheduler)", "sandbox (Containerfile.sandbox)"):
        assert result.own_mb(name) < 60, f"{name} adds more than 60 MB to the base"
