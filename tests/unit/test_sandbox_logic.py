"""Pure logic of the sandbox: no Podman, no HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox import runs
from sandbox.config import SandboxConfig, parse_size
from sandbox.limits import Enforcement, RunnerLimits, detect, human_size
from sandbox.output import OutputCap
from sandbox.podman_api import PodmanError
from sandbox.runs import RunService
from sandbox.seccomp_profile import DENIED, PODMAN_DEFAULT, tighten
from sandbox.userfiles import install_script


def test_output_cap_keeps_exactly_the_limit_in_characters() -> None:
    cap = OutputCap(5)
    assert cap.feed("héllo".encode()) is False  # exactly at the cap is not over it
    assert cap.feed(b"!") is True
    assert cap.text() == "héllo"


def test_output_cap_decodes_utf8_split_across_chunks() -> None:
    cap = OutputCap(100)
    data = "zé€😀".encode()
    for i in range(len(data)):
        cap.feed(data[i:i + 1])
    assert cap.text() == "zé€😀"


def test_output_cap_memory_is_bounded() -> None:
    cap = OutputCap(10)
    for _ in range(1000):
        cap.feed(b"x" * 65536)
    assert cap.text() == "x" * 10 and cap.reached and cap.bytes_seen == 1000 * 65536


@pytest.mark.parametrize(("text", "value"), [("1g", 1 << 30), ("512m", 512 << 20), ("1048576", 1 << 20),
                                             ("1.5G", 3 << 29), ("100k", 100 << 10), ("2GiB", 2 << 30)])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "lots", "1x", "-1g"])
def test_parse_size_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_config_requires_tokens_and_checks_numbers() -> None:
    with pytest.raises(ValueError, match="PYTHON_SANDBOX_AUTH_TOKEN"):
        SandboxConfig.from_env({"PYTHON_SCHEDULER_AUTH_TOKEN": "s"})
    base = {"PYTHON_SANDBOX_AUTH_TOKEN": "a", "HOME": "/home/x"}
    with pytest.raises(ValueError, match="PYTHON_PROCESS_TIMEOUT"):
        SandboxConfig.from_env({**base, "PYTHON_PROCESS_TIMEOUT": "0"})
    with pytest.raises(ValueError, match="PYTHON_SANDBOX_WARM_POOL"):
        SandboxConfig.from_env({**base, "PYTHON_SANDBOX_WARM_POOL": "-1"})
    config = SandboxConfig.from_env({**base, "PYTHON_RUNNER_CONTAINER_MEMORY": "2g"})
    assert config.memory == 2 << 30 and config.timeout == 60 and config.output_limit == 1_000_000
    assert config.state_dir == Path("/home/x/.local/state/seatable-sandbox")
    alt = {**base, "PYTHON_STARTER_ALTERNATIVE_FILE_SERVER_ROOT": "http://files:8082/"}
    assert SandboxConfig.from_env(alt).alternative_file_server_root == ""  # as upstream: USE_ is needed too
    alt["PYTHON_STARTER_USE_ALTERNATIVE_FILE_SERVER_ROOT"] = "true"
    assert SandboxConfig.from_env(alt).alternative_file_server_root == "http://files:8082"


def test_detect_enforcement() -> None:
    v1 = detect({"host": {"cgroupVersion": "v1", "cgroupControllers": []}})
    assert (v1.memory, v1.pids, v1.cpu) == ("rlimit", "rlimit", "none")
    v2 = detect({"host": {"cgroupVersion": "v2", "cgroupControllers": ["memory", "pids"]}})
    assert (v2.memory, v2.pids, v2.cpu) == ("cgroup", "cgroup", "none")


def test_limits_go_to_cgroups_or_rlimits() -> None:
    limits = RunnerLimits(memory=1 << 30, pids=256, cpus=1.5, timeout=60, tmpfs_size=100 << 20)
    cgroup = Enforcement("cgroup", "cgroup", "cgroup", "v2")
    assert limits.resource_limits(cgroup) == {"memory": {"limit": 1 << 30, "swap": 1 << 30},
                                              "pids": {"limit": 256}, "cpu": {"quota": 150000, "period": 100000}}
    assert "--address-space" not in limits.entrypoint_args(cgroup)
    fallback = Enforcement("rlimit", "rlimit", "none", "v1")
    assert limits.resource_limits(fallback) == {}
    args = limits.entrypoint_args(fallback)
    assert args[args.index("--address-space") + 1] == str(1 << 30)
    assert args[args.index("--nproc") + 1] == "256"


def test_human_size() -> None:
    assert (human_size(512 << 20), human_size(1 << 30), human_size(1536 << 20)) == ("512 MiB", "1 GiB", "1.5 GiB")


def test_seccomp_profile_denies_what_podman_allows() -> None:
    default = json.loads(PODMAN_DEFAULT.read_text())
    tightened = tighten(default)
    allowed = {n for r in tightened["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}
    assert not allowed & DENIED and "clone3" not in allowed
    clone3 = [r for r in tightened["syscalls"] if r["names"] == ["clone3"]]
    assert clone3 == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38, "args": []}]
    assert {"read", "write", "clone", "execve"} <= allowed


def test_alternative_file_server_root_replaces_scheme_and_host() -> None:
    service = RunService.__new__(RunService)
    service.alternative_file_server_root = "http://seatable.internal:8082/seafhttp-alt"
    rewritten = service._rewrite("https://cloud.example/seafhttp/files/abc/index.py?dl=1")
    assert rewritten == "http://seatable.internal:8082/seafhttp-alt/seafhttp/files/abc/index.py?dl=1"


def test_imported_modules_reads_import_lines() -> None:
    from sandbox.pool import imported_modules

    script = ("import os, sys as system\nfrom seatable_api import Base, context\nimport pandas.io.json\n"
              "def f():\n    import barcode\n# import not_a_module\nx = 'import strings'\n")
    assert imported_modules(script) == {"os", "sys", "seatable_api", "pandas", "barcode"}


def test_pick_prefers_exact_then_smallest_superset_then_most_overlap() -> None:
    from sandbox.pool import pick

    full, api, none = frozenset({"seatable_api", "pandas"}), frozenset({"seatable_api"}), frozenset[str]()
    assert pick([], api) is None
    assert pick([full, api, none], api) == 1
    assert pick([full, none], api) == 0  # has everything: fastest for this script
    assert pick([none, full], frozenset()) == 0
    assert pick([none, api], full) == 1  # nothing has everything: most of it


def test_a_result_queued_without_its_own_fsync_is_synced_and_read_back(tmp_path: Path) -> None:
    """Issue 16: the result's commit no longer waits for the disk; sync() makes it durable while it is sent."""
    from sandbox.outbox_store import OutboxStore, pack

    store = OutboxStore(tmp_path / "outbox.sqlite3")
    assert store.accept(7, 1.0, "secret")
    store.enqueue(7, "result", pack(b'{"script_id": 7}'), 2.0, ends_run=True, durable=False)
    store.sync()
    again = OutboxStore(tmp_path / "outbox.sqlite3")  # another connection sees what was committed
    assert again.state(7) == "reporting" and again.in_flight() == []
    assert [(e.script_id, e.kind, e.secret) for e in again.heads()] == [(7, "result", "secret")]
    again.reclaim(truncate_log=True)  # a checkpoint may empty the log first: syncing it is then a no-op
    store.sync()
    store.close()
    again.close()


def test_a_long_sandbox_failure_keeps_the_cause_at_its_end() -> None:
    """Podman's message puts the cause (runc's error) after the container's id and the runtime's prefixes."""
    prefix = "attach refused: HTTP/1.1 409 Conflict: preparing container " + "ab" * 32 + " for attach: runc: "
    cause = "error during container init: error setting rlimits for ready process: operation not permitted"
    reason = runs._reason(PodmanError(prefix + "runc create failed: unable to start container process: " * 4 + cause))
    assert reason.startswith("attach refused: HTTP/1.1 409 Conflict") and reason.endswith(cause)
    assert len(reason) == runs.REASON_MAX
    assert runs._reason(PodmanError("short")) == "short"
    assert runs._reason(RuntimeError("first line\nsecond")) == "first line"


def test_a_wrapper_is_written_once_and_replaces_what_is_planted_at_its_name(tmp_path: Path) -> None:
    """host-setup's wrappers (runtime, monitor): rewritten only when their text changes, never through a link."""
    path = tmp_path / "libexec" / "conmon-user"
    assert install_script(path, "#!/bin/sh\nexec conmon \"$@\"\n") == path
    assert path.stat().st_mode & 0o777 == 0o755 and path.read_text() == "#!/bin/sh\nexec conmon \"$@\"\n"
    inode = path.stat().st_ino
    install_script(path, "#!/bin/sh\nexec conmon \"$@\"\n")
    assert path.stat().st_ino == inode  # the same text: left alone
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("not a wrapper")
    path.unlink()
    path.symlink_to(elsewhere)
    install_script(path, "#!/bin/sh\nexec other \"$@\"\n")
    assert not path.is_symlink() and path.read_text() == "#!/bin/sh\nexec other \"$@\"\n"
    assert elsewhere.read_text() == "not a wrapper"
