"""The runtime dependencies in pyproject.toml are the third-party packages the services import, no more."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = ("pipeline_config", "scheduler", "sandbox", "httpworker", "observability")
# distribution name -> the module it is imported as
# Host packages, not PyPI's: sandbox/netguard_helper.py runs on /usr/bin/python3 with Debian's python3-nftables
# (./dev and host-setup install it).
SYSTEM_MODULES = {"nftables"}
IMPORT_NAMES = {"prometheus-client": "prometheus_client", "python-json-logger": "pythonjsonlogger",
                "pyjwt": "jwt", "seatable-api": "seatable_api", "podman-compose": "podman_compose"}


def imported_top_level(package: str) -> set[str]:
    names: set[str] = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def distribution(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_runtime_dependencies_are_what_the_services_import() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {IMPORT_NAMES.get(distribution(r), distribution(r)) for r in project["dependencies"]}
    imported = set().union(*(imported_top_level(p) for p in RUNTIME_PACKAGES))
    third_party = imported - set(sys.stdlib_module_names) - set(RUNTIME_PACKAGES) - {"runner_rootfs"} - SYSTEM_MODULES
    assert third_party == declared
    test_only = {IMPORT_NAMES.get(distribution(r), distribution(r)) for r in project["optional-dependencies"]["test"]}
    assert not (third_party & (test_only - declared)), "a test-only package is imported by the services"
    assert all(re.search(r">=\d", r) for r in project["dependencies"]), "every runtime dependency has a lower bound"
