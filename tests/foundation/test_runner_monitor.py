"""A runner's conmon starts no `podman container cleanup` when it ends: the sandbox removes it itself.

The wrapper (sandbox.runner_monitor) is run here with a stand-in conmon, then through real Podman.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from sandbox.driver import LABEL, ContainerDriver, Job
from sandbox.host import SandboxUser
from sandbox.podman_api import PodmanAPI
from sandbox.runner_monitor import CLEANUP_ANNOTATION, monitor_wrapper, wrapper_path

PODMAN_ARGS = ["--api-version", "1", "-c", "ab12", "-u", "ab12", "-r", "/usr/bin/runc",
               "--exit-dir", "/run/user/1/libpod/tmp/exits", "--exit-command", "/usr/bin/podman",
               "--exit-command-arg", "--root", "--exit-command-arg", "/home/u/storage dir",
               "--exit-command-arg", "container", "--exit-command-arg", "cleanup", "--exit-command-arg", "ab12",
               "--log-path", "/a path/with spaces.log"]
WITHOUT_EXIT = ["--api-version", "1", "-c", "ab12", "-u", "ab12", "-r", "/usr/bin/runc",
                "--exit-dir", "/run/user/1/libpod/tmp/exits", "--log-path", "/a path/with spaces.log"]


def stand_in(tmp_path: Path, annotated: bool) -> tuple[Path, Path, Path]:
    """The wrapper around a conmon that writes its arguments one per line, and a bundle."""
    seen = tmp_path / "conmon-args"
    conmon = tmp_path / "conmon"
    conmon.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > {seen}\n')
    conmon.chmod(0o755)
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(monitor_wrapper(str(conmon)))
    wrapper.chmod(0o755)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    annotations = '"io.container.manager":"libpod"' + (f',"{CLEANUP_ANNOTATION}":"sandbox"' if annotated else "")
    (bundle / "config.json").write_text('{"ociVersion":"1.0.2-dev","annotations":{' + annotations + "}}")
    return wrapper, bundle, seen


def conmon_saw(wrapper: Path, seen: Path, *args: str) -> list[str]:
    done = subprocess.run([str(wrapper), *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return seen.read_text().splitlines()


@pytest.mark.parametrize("form", ["-b", "--bundle", "--bundle="])
def test_a_runner_is_monitored_without_the_exit_command(tmp_path: Path, form: str) -> None:
    wrapper, bundle, seen = stand_in(tmp_path, annotated=True)
    where = [f"--bundle={bundle}"] if form == "--bundle=" else [form, str(bundle)]
    assert conmon_saw(wrapper, seen, *PODMAN_ARGS, *where) == WITHOUT_EXIT + where


def test_the_joined_forms_of_the_exit_command_are_dropped_too(tmp_path: Path) -> None:
    wrapper, bundle, seen = stand_in(tmp_path, annotated=True)
    args = ["-c", "ab12", "--exit-command=/usr/bin/podman", "--exit-command-arg=cleanup", "-b", str(bundle)]
    assert conmon_saw(wrapper, seen, *args) == ["-c", "ab12", "-b", str(bundle)]


def test_other_containers_keep_their_exit_command(tmp_path: Path) -> None:
    wrapper, bundle, seen = stand_in(tmp_path, annotated=False)
    assert conmon_saw(wrapper, seen, *PODMAN_ARGS, "-b", str(bundle)) == [*PODMAN_ARGS, "-b", str(bundle)]
    assert conmon_saw(wrapper, seen, "--version") == ["--version"]  # no bundle at all: Podman asking for it


def test_a_runner_ends_removed_by_the_sandbox_with_its_exit_code(driver: ContainerDriver, podman: PodmanAPI,
                                                                  sandbox_user: SandboxUser) -> None:
    """Through real Podman: no exit command in the runner's conmon, the exit code read all the same, and the
    sandbox's removal leaves nothing (no container, no exit file)."""
    if shutil.which("conmon") is None:
        pytest.skip("no conmon on the PATH: host-setup leaves Podman's own choice")
    assert podman.client.info()["host"]["conmon"]["path"] == str(wrapper_path(sandbox_user.name))
    runner = driver.prepare("monitor-test")
    try:
        state = podman.inspect(runner.container)["State"]
        monitor = Path(f"/proc/{state['ConmonPid']}/cmdline").read_bytes().split(b"\0")
        assert monitor[0].endswith(b"conmon") and b"--exit-command" not in monitor, monitor
        result = driver.run(Job(1, "print('bye'); raise SystemExit(3)", "", {}), 30, lambda _c: None,
                            lambda _started: None, runner=runner)
        assert (result.return_code, result.output) == (3, "bye\n"), result
        assert podman.wait(runner.container) == 3  # from conmon's exit file
        time.sleep(0.5)
        assert podman.inspect(runner.container)["State"]["Status"] == "stopped"  # no cleanup process ran
    finally:
        assert driver.cleanup(runner.container)
    assert runner.container not in {c["Id"] for c in podman.labelled(f"{LABEL}={driver.node}")}
    assert not (sandbox_user.runtime_dir / "libpod" / "tmp" / "exits" / runner.container).exists()
