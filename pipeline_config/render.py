"""Documentation rendered from the registry: the README's tables and the environment file templates.

The systemd modules ship `env_template` output (`install-systemd --print-env`); the repository's copies under
`systemd/` and `containers/` are written by `python -m tests.deployment.render` and drift-tested.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline_config.registry import Service, Use
from pipeline_config.variables import SCHEDULER

# Set by containers/compose.yaml per service (addresses on the compose network, the secrets' files); the env file
# must not override them, so the example lists them as comments only.
COMPOSE_FIXED = frozenset({
    "DB_HOST", "PYTHON_SCHEDULER_BIND_HOST", "PYTHON_SCHEDULER_PORT", "PYTHON_SANDBOX_URLS",
})
# The Podman secrets of containers/compose.yaml: variable -> secret name (a file under /run/secrets).
COMPOSE_SECRETS = {
    "PYTHON_SCHEDULER_AUTH_TOKEN": "seatable_auth_token",
    "PYTHON_SANDBOX_AUTH_TOKEN": "sandbox_auth_token",
    "DB_PASSWD": "db_password",
}
COMPOSE_REQUIRED = {"SEATABLE_SERVER_URL": "", "DB_USER": "seatable"}
# Read by the MariaDB container of the compose stack, not by our services (its passwords are Podman secrets).
MARIADB_VARIABLES = {"MARIADB_USER": "seatable"}


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
    """containers/pipeline.env.example: the settings (never the secrets) MariaDB, the scheduler and the dispatcher
    read; the sandbox runs on the host with its own environment file."""
    lines = [
        "# SeaTable Python pipeline for podman-compose: the settings of MariaDB, the scheduler and the dispatcher.",
        "# Copy to pipeline.env (owned by the stack user); generated from pipeline_config/variables.py.",
        "# No secrets here: they are Podman secrets (`podman secret create`, see compose.yaml), which compose.yaml",
        "# gives each service as files under /run/secrets (NAME_FILE). The sandbox runs on the host as the sandbox",
        "# user (its systemd user unit) with its own environment file: its variables are not read from here.",
        "# Variables compose.yaml sets per service are listed as comments only: setting them here has no effect.",
        "",
        "## Required",
        *(f"{name}={value}" for name, value in COMPOSE_REQUIRED.items()),
        *(f"{name}={value}" for name, value in MARIADB_VARIABLES.items()),
        "",
        "## Scheduler, dispatcher, maintenance",
        "",
    ]
    for var, use in SCHEDULER.uses():
        if var.name in COMPOSE_REQUIRED:
            continue
        if var.name in COMPOSE_SECRETS:
            lines += [f"# {use.meaning.rstrip('.')}. Podman secret {COMPOSE_SECRETS[var.name]}, set by compose.yaml.",
                      f"#{var.name}_FILE=/run/secrets/{COMPOSE_SECRETS[var.name]}", ""]
        elif var.secret:
            lines += [_described(use) + f" A secret: a Podman secret given as {var.name}_FILE.",
                      f"#{var.name}_FILE=/run/secrets/<name>", ""]
        else:
            lines += [_described(use, fixed=var.name in COMPOSE_FIXED), f"#{var.name}={_literal(use)}", ""]
    return "\n".join(lines)
