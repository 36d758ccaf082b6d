"""Upstream's runner settings: their safe meaning is taken, a weakening value is refused with one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.runner_options import BindMount, RunnerOptionError, read


def options(tmp_path: Path, raw: str, network: str = "open", **env: str) -> object:
    return read({"PYTHON_RUNNER_OTHER_OPTIONS": raw, **env}, network, protected=(str(tmp_path / "state"),))


def test_admin_docs_recipes_are_understood(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    bundle = tmp_path / "runner-ca-bundle.crt"
    bundle.write_text("pem")
    result = read({"PYTHON_RUNNER_OTHER_OPTIONS": str([
        f"--volume={files}:/files",
        f"--volume={bundle}:/etc/ssl/certs/runner-ca-bundle.crt:ro",
        "--env=REQUESTS_CA_BUNDLE=/etc/ssl/certs/runner-ca-bundle.crt",
        f"--mount=type=bind,source={files},target=/data,rw",
        "--add-host=files.internal:192.0.2.10",
    ])}, "open")
    assert result.mounts == (BindMount(str(files), "/files"),
                             BindMount(str(bundle), "/etc/ssl/certs/runner-ca-bundle.crt"),
                             BindMount(str(files), "/data", writable=True))
    assert result.mounts[0].spec()["options"][0] == "ro"  # read-only unless rw is written
    assert result.env == {"REQUESTS_CA_BUNDLE": "/etc/ssl/certs/runner-ca-bundle.crt"}
    assert result.spec() == {"hostadd": ["files.internal:192.0.2.10"], "use_image_hosts": False}


@pytest.mark.parametrize(("raw", "why"), [
    ("['--privileged=true']", "supported here"),
    ("['--cap-add=SYS_ADMIN']", "supported here"),
    ("['--security-opt=seccomp=unconfined']", "supported here"),
    ("['--network=host']", "supported here"),
    ("['--volume=/:/host']", "contains"),
    ("['--volume=/var:/v']", "contains"),
    ("['--volume=/proc:/p']", "/proc"),
    ("['--volume=/etc:/e:ro']", "/etc"),
    ("['--volume=/run/user:/r']", "/run"),
    ("['--mount=type=volume,source=data,target=/d']", "type=bind"),
    ("['--volume=relative:/d']", "absolute"),
    ("['--volume=/nonexistent-path-x:/d']", "No such file"),
    ("['--env=1BAD=x']", "NAME=VALUE"),
    ("['--add-host=name:not-an-ip']", "not an IP"),
    ("['--volume']", "--flag=value"),
    ("--volume=/x:/y", "Python list"),
    ("[1, 2]", "Python list"),
    ("__import__('os')", "Python list"),
])
def test_weakening_or_malformed_options_are_refused(tmp_path: Path, raw: str, why: str) -> None:
    with pytest.raises(RunnerOptionError) as refused:
        options(tmp_path, raw)
    message = str(refused.value)
    assert why in message and "\n" not in message


def test_mount_targets_that_hide_the_isolation_are_refused(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    for target in ("/", "/tmp", "/proc/self", "/dev", "/opt/seatable-runner", "/opt/seatable-runner/x",
                   "/run/egress", "/sys/../sys"):
        with pytest.raises(RunnerOptionError, match="isolation"):
            options(tmp_path, str([f"--volume={files}:{target}"]))


def test_the_sandbox_own_paths_and_symlinks_to_them_are_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "outbox").mkdir(parents=True)
    link = tmp_path / "innocent"
    link.symlink_to(state / "outbox")
    for source in (state, state / "outbox", link, tmp_path):
        with pytest.raises(RunnerOptionError):
            options(tmp_path, str([f"--volume={source}:/d"]))


def test_extra_hosts_need_the_open_network(tmp_path: Path) -> None:
    with pytest.raises(RunnerOptionError, match="PYTHON_RUNNER_NETWORK=open"):
        options(tmp_path, "['--add-host=a.example:192.0.2.1']", network="seatable")


def test_hardening_switches(tmp_path: Path) -> None:
    accepted = options(tmp_path, "", PYTHON_RUNNER_READ_ONLY_FILESYSTEM="true", PYTHON_RUNNER_NO_NEW_PRIVILEGES="True",
                       PYTHON_RUNNER_DROPPED_CAPABILITIES="CAP_NET_RAW, CAP_SYS_CHROOT", PYTHON_RUNNER_UID="1000",
                       PYTHON_RUNNER_USER="seatable")
    notes = accepted.notes  # type: ignore[attr-defined]
    assert len(notes) == 3 and any("CAP_NET_RAW" in n for n in notes)
    for name, value in (("PYTHON_RUNNER_READ_ONLY_FILESYSTEM", "false"), ("PYTHON_RUNNER_NO_NEW_PRIVILEGES", "0"),
                        ("PYTHON_RUNNER_READ_ONLY_FILESYSTEM", "maybe"), ("PYTHON_RUNNER_UID", "0"),
                        ("PYTHON_RUNNER_USER", "root"), ("PYTHON_RUNNER_GROUP", "root"),
                        ("PYTHON_RUNNER_DROPPED_CAPABILITIES", "NET-RAW")):
        with pytest.raises(RunnerOptionError, match=name):
            options(tmp_path, "", **{name: value})
