"""The generated files committed under systemd/ and containers/, rendered from the code.

`python -m tests.deployment.render` rewrites them; test_systemd.py fails when they drift from the code
(a variable added to a VARIABLES table, a hardening key changed, ...).
"""

from __future__ import annotations

from pathlib import Path

from sandbox import systemd as sandbox_systemd
from sandbox.config import VARIABLES as SANDBOX_VARIABLES
from scheduler import systemd as scheduler_systemd
from scheduler.config import VARIABLES as SCHEDULER_VARIABLES

REPO = Path(__file__).resolve().parents[2]

# Set by compose.yaml per service (addresses on the compose network, the socket path inside the container);
# the env file must not override them, so the example lists them as comments only.
COMPOSE_FIXED = {
    "DB_HOST", "PYTHON_SCHEDULER_BIND_HOST", "PYTHON_SCHEDULER_PORT", "PYTHON_SANDBOX_URLS", "PYTHON_SCHEDULER_URL",
    "PYTHON_SANDBOX_BIND", "PYTHON_SANDBOX_NODE_NAME", "PYTHON_SANDBOX_PODMAN_URL", "PYTHON_SANDBOX_STATE_DIR",
    "PYTHON_RUNNER_IMAGE", "PYTHON_SANDBOX_SECCOMP_PROFILE", "PYTHON_SCHEDULER_SQLITE_PATH", "PYTHON_RUNNER_NETWORK",
}
MARIADB_VARIABLES = (
    ("MARIADB_USER", "(required)", "database user the MariaDB container creates at its first start; = DB_USER"),
    ("MARIADB_PASSWORD", "(required)", "its password; = DB_PASSWD"),
    ("MARIADB_ROOT_PASSWORD", "(required)", "MariaDB's root password (the scheduler does not use it)"),
)


def compose_env_example() -> str:
    """containers/pipeline.env.example: every variable of both services, shared by the compose services."""
    seen: set[str] = set()
    lines = [
        "# SeaTable Python pipeline for podman-compose: copy to pipeline.env (mode 0600, owned by the sandbox user)",
        "# and fill in the secrets. Generated from the scheduler's and the sandbox's VARIABLES tables.",
        "# Variables compose.yaml sets per service are listed as comments only: setting them here has no effect.",
        "",
        "## Secrets (required)",
        "PYTHON_SCHEDULER_AUTH_TOKEN=",
        "PYTHON_SANDBOX_AUTH_TOKEN=",
        "SEATABLE_SERVER_URL=",
        "DB_USER=seatable",
        "DB_PASSWD=",
        *(f"{name}=" + ("seatable" if name == "MARIADB_USER" else "") for name, _d, _m in MARIADB_VARIABLES),
        "",
    ]
    seen.update({"PYTHON_SCHEDULER_AUTH_TOKEN", "PYTHON_SANDBOX_AUTH_TOKEN", "SEATABLE_SERVER_URL", "DB_USER",
                 "DB_PASSWD", *(name for name, _d, _m in MARIADB_VARIABLES)})
    for title, variables in (("Scheduler, dispatcher, maintenance", SCHEDULER_VARIABLES),
                             ("Sandbox", SANDBOX_VARIABLES)):
        lines += [f"## {title}", ""]
        for name, default, meaning in variables:
            if name in seen:
                continue
            seen.add(name)
            fixed = " Set by compose.yaml." if name in COMPOSE_FIXED else ""
            lines.append(f"# {meaning.rstrip('.')}. Default: {default or '(empty)'}.{fixed}")
            literal = "" if default.startswith(("(", "<", "~")) else default
            lines.append(f"#{name}={literal}")
            lines.append("")
    return "\n".join(lines)


def expected_files() -> dict[Path, str]:
    units = scheduler_systemd.units()
    files = {REPO / "systemd" / name: text for name, text in units.items()}
    files[REPO / "systemd" / "sysusers.d" / "seatable-scheduler.conf"] = scheduler_systemd.sysusers()
    files[REPO / "systemd" / "user" / sandbox_systemd.UNIT] = sandbox_systemd.user_unit()
    files[REPO / "systemd" / "user@.service.d" / sandbox_systemd.DELEGATE_DROPIN] = sandbox_systemd.delegate_dropin()
    files[REPO / "systemd" / "scheduler.env"] = scheduler_systemd.env_template()
    files[REPO / "systemd" / "sandbox.env"] = sandbox_systemd.env_template()
    files[REPO / "containers" / "pipeline.env.example"] = compose_env_example()
    return files


def main() -> None:
    for path, text in expected_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
