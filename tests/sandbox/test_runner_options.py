"""Upstream's admin-documented runner settings with real runners (issue 15, item 4): a host directory mounted
read-only (read-write only when the admin writes rw), the admin docs' custom-CA recipe, extra environment; a
setting that would weaken the runner stops the service at start with one line."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.podman import VENV_BIN, CallbackReceiver

SCRIPT = """\
import os
print("read", open("/files/hello.txt").read().strip())
try:
    open("/files/planted.txt", "w").write("x")
    print("ro-write", "allowed")
except OSError as exc:
    print("ro-write", exc.errno)
open("/drop/out.txt", "w").write("from the runner")
print("rw-write", "ok")
print("env", os.environ.get("REQUESTS_CA_BUNDLE"), os.environ.get("api_token"))
print("ca", open(os.environ["REQUESTS_CA_BUNDLE"]).read().strip())
"""


@pytest.fixture
def host_dirs() -> Iterator[tuple[Path, Path, Path]]:
    """A read-only share, a drop directory the admin mounts rw, and a CA bundle file: what the runners' Podman
    user can read (the paths are the admin's, outside any user's home)."""
    base = Path(tempfile.mkdtemp(prefix="runner-options-"))
    base.chmod(0o755)
    files, drop = base / "files", base / "drop"
    files.mkdir(mode=0o755)
    drop.mkdir()
    drop.chmod(0o777)  # the runner's uid (a subordinate id) writes here, as the admin allowed
    (files / "hello.txt").write_text("hello from the host\n")
    (files / "hello.txt").chmod(0o644)
    bundle = base / "runner-ca-bundle.crt"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n")
    bundle.chmod(0o644)
    yield files, drop, bundle
    shutil.rmtree(base)


def test_admin_mounts_and_env_reach_the_script(sandbox_factory: Any, receiver: CallbackReceiver,
                                               host_dirs: tuple[Path, Path, Path]) -> None:
    files, drop, bundle = host_dirs
    options = [f"--volume={files}:/files", f"--mount=type=bind,source={drop},target=/drop,rw",
               f"--volume={bundle}:/etc/ssl/certs/runner-ca-bundle.crt:ro",
               "--env=REQUESTS_CA_BUNDLE=/etc/ssl/certs/runner-ca-bundle.crt", "--env=api_token=admin-value"]
    sandbox = sandbox_factory(PYTHON_RUNNER_OTHER_OPTIONS=str(options), PYTHON_RUNNER_READ_ONLY_FILESYSTEM="true",
                              PYTHON_RUNNER_NO_NEW_PRIVILEGES="true", PYTHON_RUNNER_UID="1000")
    assert sandbox.run(1501, SCRIPT, env={"api_token": "the-run-token"}).status_code == 202
    result = receiver.result(1501, timeout=120)
    assert result["success"] is True, result
    lines = dict(line.split(" ", 1) for line in result["output"].splitlines())
    assert lines["read"] == "hello from the host"
    assert lines["ro-write"] == "30"  # EROFS: read-only unless the admin wrote rw
    assert lines["rw-write"] == "ok"
    assert (drop / "out.txt").read_text() == "from the runner"
    assert not (files / "planted.txt").exists()
    # The admin's variables are there; the run's own values win over them.
    assert lines["env"] == "/etc/ssl/certs/runner-ca-bundle.crt the-run-token"
    assert lines["ca"].startswith("-----BEGIN CERTIFICATE-----")
    assert "PYTHON_RUNNER_UID=1000" in sandbox.log()  # accepted, and said what it means here


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("PYTHON_RUNNER_READ_ONLY_FILESYSTEM", "false", "runners always have a read-only root"),
    ("PYTHON_RUNNER_NO_NEW_PRIVILEGES", "false", "runners always have no-new-privileges"),
    ("PYTHON_RUNNER_UID", "0", "never run as root"),
    ("PYTHON_RUNNER_OTHER_OPTIONS", "['--privileged=true']", "'--privileged=true' is refused"),
    ("PYTHON_RUNNER_OTHER_OPTIONS", "['--volume=/:/host']", "'--volume=/:/host' is refused"),
    ("PYTHON_RUNNER_OTHER_OPTIONS", "['--volume=/var/run:/r']", "is refused"),
])
def test_weakening_settings_stop_the_service_with_one_line(sandbox_user: Any, name: str, value: str,
                                                           expected: str) -> None:
    env = {**sandbox_user.env(), "PYTHON_SANDBOX_AUTH_TOKEN": "t",
           "PYTHON_SANDBOX_BIND": "127.0.0.1:1", name: value}
    result = subprocess.run(sandbox_user.command([str(VENV_BIN / "seatable-sandbox"), "serve"]), env=env,
                            cwd="/", capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seatable-sandbox serve: ") and expected in lines[0], lines
