"""./dev names every missing host tool in one line before anything runs (its check_tools function)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

DEV = Path(__file__).resolve().parents[2] / "dev"


def check_tools(*entries: str) -> subprocess.CompletedProcess[str]:
    """Run ./dev's own check_tools and die functions (extracted, not copied) on the given entries."""
    text = DEV.read_text()
    check = re.search(r"^check_tools\(\) \{.*?^\}$", text, re.MULTILINE | re.DOTALL)
    die = re.search(r"^die\(\) .*$", text, re.MULTILINE)
    assert check and die
    script = f"set -euo pipefail\n{die.group(0)}\n{check.group(0)}\ncheck_tools \"$@\"\n"
    return subprocess.run(["bash", "-c", script, "dev", *entries], capture_output=True, text=True, timeout=30,
                          check=False)


def test_present_tools_pass_silently() -> None:
    result = check_tools("ls|coreutils", "/bin/sh|/no/such/sh|dash")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_missing_tools_are_named_in_one_line_with_their_package() -> None:
    result = check_tools("ls|coreutils", "no-such-tool-xyz|xyz-utils",
                         "/no/such/netavark|/no/libexec/netavark|netavark")
    assert result.returncode == 1
    assert result.stderr == ("dev: missing host tools: no-such-tool-xyz (apt-get install xyz-utils), "
                             "netavark (apt-get install netavark)\n")


def test_every_apt_package_has_its_tools_checked() -> None:
    """A package ./dev installs but never checks would fail later, far from its cause."""
    text = DEV.read_text()
    apt = re.search(r"^APT_PACKAGES=\((.*?)\)", text, re.MULTILINE | re.DOTALL)
    tools = re.search(r"^HOST_TOOLS=\((.*?)\)", text, re.MULTILINE | re.DOTALL)
    assert apt and tools
    packages = set(apt.group(1).split())
    checked = {entry.strip('"').rsplit("|", 1)[1] for entry in tools.group(1).split()}
    assert packages - checked <= {"ca-certificates", "python3-venv"}  # no binary; venv is checked by import
