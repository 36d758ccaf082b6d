"""Per-run cgroups on cgroup v1 hosts: a runner is born inside its own cgroups or not at all.

Found by CI: a sandbox starting up removed, as "left by a crash", the cgroups another sandbox of the same
user had just made for a runner it was about to start; the runtime wrapper then let that runner start in
the shared subtree, where no memory limit of its own applied (it held three times its limit).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sandbox.cgroups import RUN_CGROUPS_ANNOTATION, RunCgroups, runtime_wrapper, subtree_name
from sandbox.driver import LABEL, ContainerDriver, Job
from sandbox.podman_api import PodmanAPI, PodmanError

UID = 4321
CONTAINER = "ab" * 32


def fake_host(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A cgroupfs stand-in with the user's subtree for memory and pids, and a runc that records its call."""
    root = tmp_path / "cgroup"
    for controller in ("memory", "pids"):
        (root / controller / subtree_name(UID)).mkdir(parents=True)
    calls = tmp_path / "runc-calls"
    runc = tmp_path / "runc"
    runc.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    runc.chmod(0o755)
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(runtime_wrapper(UID, str(runc), root=root))
    wrapper.chmod(0o755)
    return root, wrapper, calls


def bundle(tmp_path: Path, annotated: bool) -> Path:
    path = tmp_path / "bundle"
    path.mkdir(exist_ok=True)
    annotations = {"io.container.manager": "libpod"}
    if annotated:
        annotations[RUN_CGROUPS_ANNOTATION] = "required"
    text = ",".join(f'"{k}":"{v}"' for k, v in annotations.items())
    (path / "config.json").write_text('{"ociVersion":"1.0.2-dev","annotations":{' + text + "}}")
    return path


def call(wrapper: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(wrapper), "--root", "/run/runc", *args], capture_output=True, text=True, check=False)


def test_a_runner_joins_its_cgroups_before_runc_creates_it(tmp_path: Path) -> None:
    root, wrapper, calls = fake_host(tmp_path)
    for controller in ("memory", "pids"):
        (root / controller / subtree_name(UID) / CONTAINER).mkdir()
    done = call(wrapper, "create", "--bundle", str(bundle(tmp_path, annotated=True)), "--pid-file", "p", CONTAINER)
    assert done.returncode == 0, done.stderr
    for controller in ("memory", "pids"):
        joined = (root / controller / subtree_name(UID) / CONTAINER / "cgroup.procs").read_text().split()
        assert len(joined) == 1 and joined[0].isdigit(), (controller, joined)
    assert calls.read_text().split()[:3] == ["--root", "/run/runc", "create"]


@pytest.mark.parametrize("form", ["--bundle", "-b", "--bundle="])
def test_a_runner_without_its_cgroups_is_refused(tmp_path: Path, form: str) -> None:
    root, wrapper, calls = fake_host(tmp_path)
    (root / "memory" / subtree_name(UID) / CONTAINER).mkdir()  # its pids cgroup is gone
    path = str(bundle(tmp_path, annotated=True))
    where = [form + path] if form.endswith("=") else [form, path]
    done = call(wrapper, "create", *where, "--pid-file", "p", CONTAINER)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"runner {CONTAINER} has no cgroup in {root}/pids/{subtree_name(UID)}: refused")
    assert not calls.exists(), "runc ran for a runner outside its cgroups"


def test_other_containers_and_other_commands_go_to_runc_unchanged(tmp_path: Path) -> None:
    _root, wrapper, calls = fake_host(tmp_path)
    assert call(wrapper, "create", "--bundle", str(bundle(tmp_path, annotated=False)), CONTAINER).returncode == 0
    assert call(wrapper, "start", CONTAINER).returncode == 0
    assert call(wrapper, "delete", "--force", CONTAINER).returncode == 0
    assert [line.split()[2] for line in calls.read_text().splitlines()] == ["create", "start", "delete"]


def test_reclaim_keeps_cgroups_made_while_it_lists_the_containers(tmp_path: Path) -> None:
    """Another process makes a container, then its cgroups, while this one is between its two listings."""
    root = tmp_path / "cgroup"
    for controller in ("memory", "pids"):
        (root / controller / subtree_name(os.getuid())).mkdir(parents=True)
    cgroups = RunCgroups(os.getuid(), root=root)
    leftover, newcomer = "cd" * 32, "ef" * 32
    for controller in ("memory", "pids"):
        (cgroups.base(controller) / leftover).mkdir()

    def live() -> set[str]:
        for controller in ("memory", "pids"):
            (cgroups.base(controller) / newcomer).mkdir()
        return {newcomer}  # its container exists: it was made before its cgroups

    assert cgroups.reclaim(live) == 2
    for controller in ("memory", "pids"):
        assert sorted(p.name for p in cgroups.base(controller).iterdir()) == [newcomer]


def test_podman_refuses_a_runner_whose_cgroups_are_gone(driver: ContainerDriver, podman: PodmanAPI,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the real runtime wrapper: the run fails with a clear cause, and nothing is left behind."""
    if driver.cgroups is None:
        pytest.skip("the sandbox makes no per-run cgroups here (not cgroup v1 with a delegated subtree)")
    cgroups = driver.cgroups
    made: list[str] = []
    real_create = cgroups.create

    def create_then_lose(container: str, memory: int, pids: int, cpus: float = 0.0) -> None:
        real_create(container, memory, pids, cpus)
        made.append(container)
        cgroups.remove(container)  # as a concurrent reclaim did

    monkeypatch.setattr(cgroups, "create", create_then_lose)
    containers: list[str] = []
    with pytest.raises(PodmanError) as failure:
        driver.run(Job(1, "print('unbounded')", "", {}), 30, containers.append, lambda _started: None)
    assert "has no cgroup in" in str(failure.value) and "refused" in str(failure.value), failure.value
    [container] = made
    assert container not in {c["Id"] for c in podman.labelled(f"{LABEL}={driver.node}")}
    assert not any((cgroups.base(c) / container).exists() for c in cgroups.controllers())
