"""The README's configuration tables are the ones the code generates (no drift)."""

from __future__ import annotations

from pathlib import Path

import sandbox.config
import scheduler.config

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    commands = [line.strip() for line in text.splitlines() if line.strip().startswith("./dev ")]
    assert commands[:2] == ["./dev demo", "./dev test"]


def test_configuration_tables_match_the_code() -> None:
    text = README.read_text()
    assert scheduler.config.markdown_table() in text
    assert sandbox.config.markdown_table() in text


def test_every_sandbox_variable_is_documented() -> None:
    # "Read": tests/unit/test_config_registry.py sets each one and sees the config change.
    table = sandbox.config.markdown_table()
    for name, _default, _meaning in sandbox.config.VARIABLES:
        assert f"| `{name}` |" in table
