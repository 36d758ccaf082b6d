"""The generated files committed under systemd/ and containers/, and the README's configuration tables.

`python -m tests.deployment.render` rewrites them; test_systemd.py and tests/unit/test_readme.py fail when they
drift from the code (a variable added to the registry in pipeline_config/variables.py, a hardening key changed).
"""

from __future__ import annotations

from pathlib import Path

from pipeline_config.render import compose_env_example, markdown_table
from pipeline_config.variables import SANDBOX, SCHEDULER
from sandbox import systemd as sandbox_systemd
from scheduler import systemd as scheduler_systemd

REPO = Path(__file__).resolve().parents[2]
# README heading -> the service whose configuration table follows it.
README_TABLES = {"### Scheduler and dispatcher": SCHEDULER, "### Sandbox": SANDBOX}


def readme_with_tables(text: str) -> str:
    """The README with each configuration table replaced by the one the registry renders."""
    lines = text.split("\n")
    for heading, service in README_TABLES.items():
        at = next(i for i, line in enumerate(lines) if line.startswith(heading))
        start = next(i for i in range(at, len(lines)) if lines[i].startswith("| Variable |"))
        end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
        lines[start:end] = markdown_table(service).split("\n")
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
    files[REPO / "README.md"] = readme_with_tables((REPO / "README.md").read_text())
    return files


def main() -> None:
    for path, text in expected_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
