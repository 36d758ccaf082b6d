"""The systemd units: `systemd-analyze verify` accepts each, none runs as root, each is hardened, the sandbox
is a user unit ordered after the user's podman.socket, and `install-systemd` writes them for other users and
paths without enabling anything.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_config.variables import SCHEDULER
from sandbox import systemd as sandbox_systemd
from sandbox.config import VARIABLES as SANDBOX_VARIABLES
from sandbox.host import SandboxUser
from sandbox.seccomp_profile import DENIED, ENOSYS
from scheduler import systemd as scheduler_systemd
from scheduler.config import VARIABLES as SCHEDULER_VARIABLES
from tests.deployment.render import REPO, expected_files

SYSTEM_UNITS = sorted((REPO / "systemd").glob("*.service")) + sorted((REPO / "systemd").glob("*.timer"))
USER_UNIT = REPO / "systemd" / "user" / "seatable-sandbox.service"
SERVICES = [*sorted((REPO / "systemd").glob("*.service")), USER_UNIT]
SYSTEM_HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
    "PrivateDevices": "yes", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "CapabilityBoundingSet": "",
    "SystemCallArchitectures": "native", "RestrictNamespaces": "yes", "LockPersonality": "yes",
}
# Namespace-free hardening: what a per-user manager can apply (sandbox/systemd.py says why).
USER_HARDENING = {
    # user net: the open network's rules helper joins the rootless user namespace and runners' network namespaces
    "NoNewPrivileges": "yes", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "RestrictNamespaces": "user net",
    "SystemCallArchitectures": "native", "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
    "KeyringMode": "private",
}
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def parse(path: Path) -> dict[str, dict[str, list[str]]]:
    """Unit file -> section -> key -> every value (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def verify(unit: Path, user: bool = False, runtime_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE, "systemd-analyze missing: apt-get install systemd (./dev installs it)"
    argv = [SYSTEMD_ANALYZE, *(["--user"] if user else []), "verify", "--man=no", str(unit)]
    env = dict(os.environ)
    if runtime_dir is not None:
        env["XDG_RUNTIME_DIR"] = str(runtime_dir)  # a user manager needs one, even for verify
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env)


def test_committed_files_are_what_the_code_renders() -> None:
    stale = [str(path.relative_to(REPO)) for path, text in expected_files().items()
             if not path.exists() or path.read_text() != text]
    assert not stale, f"regenerate with `python -m tests.deployment.render`: {stale}"


@pytest.mark.parametrize("unit", SYSTEM_UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify_system_unit(unit: Path, tmp_path: Path) -> None:
    # verify checks that ExecStart= binaries exist: the committed units name the ./dev virtualenv.
    staged = tmp_path / unit.name
    shutil.copy(unit, staged)
    if unit.suffix == ".timer":
        shutil.copy(unit.with_suffix(".service"), tmp_path / unit.with_suffix(".service").name)
    result = verify(staged)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_analyze_verify_user_unit(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    result = verify(USER_UNIT, user=True, runtime_dir=runtime)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_analyze_verify_delegation_dropin(tmp_path: Path) -> None:
    """The drop-in's [Service] keys, checked by verify inside a unit (verify cannot load user@.service here)."""
    dropin = parse(REPO / "systemd" / "user@.service.d" / sandbox_systemd.DELEGATE_DROPIN)
    assert dropin["Service"]["Delegate"] == ["memory pids cpu"]
    probe = tmp_path / "delegate-probe.service"
    probe.write_text("[Service]\nType=oneshot\nExecStart=/bin/true\nDelegate=memory pids cpu\n")
    result = verify(probe)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_verify_rejects_a_broken_unit(tmp_path: Path) -> None:
    """The verify tests above can fail: an unknown key and a missing binary are reported."""
    broken = tmp_path / "broken.service"
    broken.write_text(USER_UNIT.read_text().replace("ExecStart=", "ExecStart=/nonexistent/x ") + "Bogus=1\n")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    result = verify(broken, user=True, runtime_dir=runtime)
    assert "Bogus" in result.stderr and "nonexistent" in result.stderr


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_no_service_runs_as_root(unit: Path) -> None:
    service = parse(unit)["Service"]
    users = service.get("User", [])
    assert all(u not in ("root", "0") for u in users)
    if unit == USER_UNIT:
        assert users == []  # a user unit runs as the manager's user, the unprivileged sandbox user
    else:
        assert users == [scheduler_systemd.DEFAULT_USER]
        assert service.get("Group") == [scheduler_systemd.DEFAULT_USER]


@pytest.mark.parametrize("unit", sorted((REPO / "systemd").glob("*.service")), ids=lambda p: p.name)
def test_system_services_are_hardened(unit: Path) -> None:
    service = parse(unit)["Service"]
    for key, value in SYSTEM_HARDENING.items():
        assert service.get(key) == [value], f"{unit.name}: {key}={service.get(key)}"
    assert "@system-service" in service["SystemCallFilter"]
    # Nothing writable but the state directory: no ReadWritePaths= at all, StateDirectory= instead.
    assert "ReadWritePaths" not in service
    assert service["StateDirectory"] == ["seatable-scheduler"]


def test_sandbox_user_unit_is_hardened_and_after_podman_socket() -> None:
    unit = parse(USER_UNIT)
    assert unit["Unit"]["Requires"] == ["podman.socket"]
    assert unit["Unit"]["After"] == ["podman.socket"]
    service = unit["Service"]
    for key, value in USER_HARDENING.items():
        assert service.get(key) == [value], f"{key}={service.get(key)}"
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    # Mount-namespace settings would need a user namespace in a user manager: deliberately absent.
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "ReadWritePaths", "PrivateUsers"):
        assert key not in service
    assert service["Environment"] == ["PYTHON_SANDBOX_PODMAN_URL=unix://%t/podman/podman.sock"]
    assert unit["Install"]["WantedBy"] == ["default.target"]


def test_maintenance_timer_runs_one_pass() -> None:
    service = parse(REPO / "systemd" / "seatable-scheduler-maintain.service")["Service"]
    assert service["Type"] == ["oneshot"]
    assert service["ExecStart"][0].endswith("seatable-scheduler maintain --once")
    timer = parse(REPO / "systemd" / "seatable-scheduler-maintain.timer")
    assert timer["Install"]["WantedBy"] == ["timers.target"]
    from scheduler.cli import build_parser

    args = build_parser().parse_args(["maintain", "--once"])  # the CLI the timer relies on
    assert args.once is True


@pytest.mark.parametrize(("name", "variables"), [("scheduler.env", SCHEDULER_VARIABLES),
                                                 ("sandbox.env", SANDBOX_VARIABLES)])
def test_env_templates_list_every_variable(name: str, variables: tuple[tuple[str, str, str], ...]) -> None:
    text = (REPO / "systemd" / name).read_text()
    listed = {line.lstrip("#").split("=", 1)[0] for line in text.splitlines()
              if "=" in line and not line.startswith("# ")}
    assert {v[0] for v in variables} <= listed


def test_compose_env_example_lists_every_scheduler_variable_and_no_secret_value() -> None:
    """The compose stack is MariaDB, the scheduler and the dispatcher (the sandbox has its own env file on the
    host); its secrets are Podman secrets, so the example names their files, never a value to fill in."""
    compose = (REPO / "containers" / "pipeline.env.example").read_text()
    for name, _default, _meaning in SCHEDULER_VARIABLES:
        assert f"{name}=" in compose or f"{name}_FILE=" in compose, name
    secrets = [var.name for var, _use in SCHEDULER.uses() if var.secret]
    filled = [line for line in compose.splitlines() if not line.startswith("#") and "=" in line]
    assert not [line for line in filled if line.split("=", 1)[0] in secrets], filled


def test_install_systemd_writes_for_another_user_and_paths(tmp_path: Path) -> None:
    from scheduler.cli import main as scheduler_main

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON_", "DB_"))}
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from scheduler.cli import main; sys.exit(main())",
         "install-systemd", "--root", str(tmp_path), "--user", "pipeline", "--venv", "/srv/venv",
         "--env-file", "/etc/pipeline/sched.env"],
        capture_output=True, text=True, cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    api = parse(tmp_path / "etc/systemd/system/seatable-scheduler.service")["Service"]
    assert api["User"] == ["pipeline"] and api["EnvironmentFile"] == ["/etc/pipeline/sched.env"]
    assert api["ExecStart"] == ["/srv/venv/bin/seatable-scheduler serve"]
    env_file = tmp_path / "etc/pipeline/sched.env"
    assert oct(env_file.stat().st_mode & 0o777) == "0o640"
    env_file.write_text("PYTHON_SCHEDULER_AUTH_TOKEN=kept\n")
    assert scheduler_main(["install-systemd", "--root", str(tmp_path), "--env-file", "/etc/pipeline/sched.env"]) == 0
    assert env_file.read_text() == "PYTHON_SCHEDULER_AUTH_TOKEN=kept\n", "an existing env file is never overwritten"
    assert scheduler_main(["install-systemd", "--root", str(tmp_path), "--user", "root"]) == 2


def test_sandbox_install_systemd_stages_user_unit_and_dropin(sandbox_account: SandboxUser, tmp_path: Path) -> None:
    from sandbox.cli import main as sandbox_main

    user = sandbox_account
    assert sandbox_main(["install-systemd", "--root", str(tmp_path), "--venv", "/srv/venv", "--user", user.name]) == 0
    unit = tmp_path / user.home.relative_to("/") / ".config/systemd/user/seatable-sandbox.service"
    assert parse(unit)["Service"]["ExecStart"] == ["/srv/venv/bin/seatable-sandbox serve"]
    dropin = tmp_path / f"etc/systemd/system/user@{user.uid}.service.d" / sandbox_systemd.DELEGATE_DROPIN
    assert parse(dropin)["Service"]["Delegate"] == ["memory pids cpu"]
    assert (tmp_path / "etc/seatable-pipeline/sandbox.env").exists()
    assert sandbox_main(["install-systemd", "--root", str(tmp_path), "--user", "root"]) == 2


def test_enable_refuses_without_systemd_as_pid1(sandbox_account: SandboxUser, tmp_path: Path) -> None:
    if sandbox_systemd.systemd_is_pid1():
        pytest.skip("systemd is PID 1 here: --enable would really enable units")
    with pytest.raises(SystemExit, match="--root /"):
        sandbox_systemd.install(sandbox_systemd.Settings(), tmp_path, enable=True)


def test_vendored_seccomp_profile_is_tightened() -> None:
    """containers/seccomp.json (what the sandbox container hands Podman) denies what sandbox/ denies."""
    import json

    profile = json.loads((REPO / "containers" / "seccomp.json").read_text())
    allowed = {n for r in profile["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}
    assert not allowed & (DENIED | {"clone3"})
    clone3 = [r for r in profile["syscalls"] if "clone3" in r["names"]]
    assert clone3 and all(r.get("errnoRet") == ENOSYS for r in clone3)


def test_unit_files_parse_as_ini() -> None:
    """A cheap syntax check that also runs where systemd-analyze is missing."""
    for unit in [*SYSTEM_UNITS, USER_UNIT]:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(unit.read_text())
        assert parser.sections()


# `systemd-analyze security --offline=true` of every unit we install, as measured with systemd 252 (Debian 12): a
# change may lower an exposure, never raise it. docs/deployment.md ("Hardening") says which items stay open and why.
EXPOSURE = {
    "seatable-scheduler.service": 1.2,
    "seatable-scheduler-dispatch.service": 1.2,
    "seatable-scheduler-maintain.service": 1.2,
    # A user unit: what needs PrivateUsers= (capabilities, mount namespaces) cannot apply; the analysis also
    # counts the missing User= as root, which a user manager's service never is.
    "seatable-sandbox.service": 6.6,
}


def security(unit: Path, tmp_path: Path) -> tuple[float, str, str]:
    """(exposure, rating, the whole report) of one unit, analysed offline (no systemd as PID 1 needed)."""
    staged = tmp_path / unit.name
    shutil.copy(unit, staged)
    assert SYSTEMD_ANALYZE
    user = unit == USER_UNIT
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    result = subprocess.run([SYSTEMD_ANALYZE, *(["--user"] if user else []), "security", "--offline=true",
                             "--no-pager", str(staged)], capture_output=True, text=True, timeout=120, check=False,
                            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    overall = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    assert overall, result.stdout + result.stderr
    exposure, rating = overall[0].split(":")[1].split()[:2]
    return float(exposure), rating, result.stdout


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_systemd_analyze_security_holds_every_units_exposure(unit: Path, tmp_path: Path) -> None:
    exposure, rating, report = security(unit, tmp_path)
    assert exposure <= EXPOSURE[unit.name], f"{unit.name}: {exposure} {rating} (was {EXPOSURE[unit.name]})\n{report}"
    if unit != USER_UNIT:
        assert rating in ("PERFECT", "SAFE", "OK"), rating


def test_sandbox_user_unit_closes_what_a_user_manager_can(tmp_path: Path) -> None:
    """The items a per-user manager applies without a user namespace are closed; the report says so."""
    _exposure, _rating, report = security(USER_UNIT, tmp_path)
    closed = [line for line in report.splitlines() if line.startswith("✓")]
    for item in ("KeyringMode=", "SystemCallFilter=~@resources", "SystemCallFilter=~@privileged", "NoNewPrivileges=",
                 "MemoryDenyWriteExecute=", "RestrictSUIDSGID=", "LockPersonality=", "RestrictRealtime="):
        assert any(line.split()[1] == item for line in closed), item
