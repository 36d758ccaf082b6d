"""Documentation rendered from the registry: the README's tables and the environment file templates.

The systemd modules ship `env_template` output (`install-systemd --print-env`); the repository's copies under
`systemd/` and `containers/` are written by `python -m tests.deployment.render` and drift-tested.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline_config.registry import Service, Use
from pipeline_config.variables import SANDBOX, SCHEDULER, VARIABLES

# Set by containers/compose.yaml per service (addresses on the compose network, the socket path inside the
# container); the env file must not override them, so the example lists them as comments only.
COMPOSE_FIXED = frozenset({
    "DB_HOST", "PYTHON_SCHEDULER_BIND_HOST", "PYTHON_SCHEDULER_PORT", "PYTHON_SANDBOX_URLS", "PYTHON_SCHEDULER_URL",
    "PYTHON_SANDBOX_BIND", "PYTHON_SANDBOX_NODE_NAME", "PYTHON_SANDBOX_PODMAN_URL", "PYTHON_SANDBOX_STATE_DIR",
    "PYTHON_RUNNER_IMAGE", "PYTHON_SANDBOX_SECCOMP_PROFILE", "PYTHON_SCHEDULER_SQLITE_PATH", "PYTHON_RUNNER_NETWORK",
})
# Read by the MariaDB container of the compose stack, not by our services.
MARIADB_VARIABLES = (
    ("MARIADB_USER", "database user the MariaDB container creates at its first start; = DB_USER"),
    ("MARIADB_PASSWORD", "its password; = DB_PASSWD"),
    ("MARIADB_ROOT_PASSWORD", "MariaDB's root password (the scheduler does not use it)"),
)
COMPOSE_SECRETS = ("PYTHON_SCHEDULER_AUTH_TOKEN", "PYTHON_SANDBOX_AUTH_TOKEN", "SEATABLE_SERVER_URL",
                   "DB_USER", "DB_PASSWD")
COMPOSE_PRESETS = {"DB_USER": "seatable", "MARIADB_USER": "seatable"}


def markdown_table(service: Service) -> str:
    """The README's configuration table of one service."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for row in service.documented():
        default = f"`{row.default}`" if row.default else "(empty)"
        lines.append(f"| `{row.name}` | {default} | {row.description} |")
    return "\n".join(lines)


def _literal(use: Use) -> str:
    """What `#NAME=` shows: the default itself, never a placeholder like `<hostname>` or `(same)`."""
    shown = use.documented_default
    return "" if shown.startswith(("(", "<", "~")) else shown


def _entry(name: str, use: Use) -> list[str]:
    meaning = use.meaning.rstrip(".") + "."
    if use.fill_in:
        return [f"# {meaning}", f"{name}=", ""]
    return [f"# {meaning} Default: {use.documented_default or '(empty)'}", f"#{name}={_literal(use)}", ""]


def env_template(service: Service, header: Iterable[str]) -> str:
    """Every variable of a service with its meaning and default, commented out unless it must be filled in."""
    lines = [*header, ""]
    for var, use in service.uses():
        lines += _entry(var.name, use)
    return "\n".join(lines)


def _described(use: Use, label: str = "", fixed: bool = False) -> str:
    default = use.documented_default or "(empty)"
    return f"# {label}{use.meaning.rstrip('.')}. Default: {default}.{' Set by compose.yaml.' if fixed else ''}"


def compose_env_example() -> str:
    """containers/pipeline.env.example: one env file both compose services read, so every variable once."""
    lines = [
        "# SeaTable Python pipeline for podman-compose: copy to pipeline.env (mode 0600, owned by the sandbox user)",
        "# and fill in the secrets. Generated from the configuration registry (pipeline_config/variables.py).",
        "# Variables compose.yaml sets per service are listed as comments only: setting them here has no effect.",
        "",
        "## Secrets (required)",
        *(f"{name}={COMPOSE_PRESETS.get(name, '')}" for name in COMPOSE_SECRETS),
        *(f"{name}={COMPOSE_PRESETS.get(name, '')}" for name, _meaning in MARIADB_VARIABLES),
        "",
        "## Both services (one value for both; each has its own meaning and default)",
        "",
    ]
    for var in VARIABLES:
        if var.scheduler is None or var.sandbox is None or var.name in COMPOSE_SECRETS:
            continue
        fixed = var.name in COMPOSE_FIXED
        lines += [_described(var.scheduler, "Scheduler: "), _described(var.sandbox, "Sandbox: ", fixed),
                  f"#{var.name}={_literal(var.scheduler)}", ""]
    for title, service in (("Scheduler, dispatcher, maintenance", SCHEDULER), ("Sandbox", SANDBOX)):
        lines += [f"## {title}", ""]
        for var, use in service.uses():
            if (var.scheduler is not None and var.sandbox is not None) or var.name in COMPOSE_SECRETS:
                continue
            lines += [_described(use, fixed=var.name in COMPOSE_FIXED), f"#{var.name}={_literal(use)}", ""]
    return "\n".join(lines)
