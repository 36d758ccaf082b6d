"""`seatable-sandbox run-local` (also `seatable-scheduler run-local`): one script through a real runner, as root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_local(*argv: str, cli: str = "sandbox.cli", network: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"PYTHON_RUNNER_NETWORK": network} if network else {})}
    return subprocess.run([sys.executable, "-m", cli, "run-local", *argv],
                          capture_output=True, text=True, timeout=180, check=False, env=env)


@pytest.mark.parametrize("cli", ["sandbox.cli", "scheduler.cli"])
def test_runs_a_script_with_context_and_env(runner_image: str, tmp_path: Path, cli: str) -> None:
    script = tmp_path / "ok.py"
    script.write_text("import os\nfrom seatable_api import context\n"
                      "print(context.current_table, os.environ['dtable_web_url'])\n")
    result = run_local(str(script), "--context", '{"table": "Orders"}', "--env", "dtable_web_url=http://seatable.test",
                       cli=cli)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Orders http://seatable.test\n"
    assert result.stderr.startswith("--- succeeded: exited, return code 0,")


def test_the_open_network_applies(runner_image: str, tmp_path: Path) -> None:
    """As in a real run of the default mode: an interface, its rules, and the report of what they refused."""
    script = tmp_path / "net.py"
    script.write_text("import socket\n"
                      "try:\n"
                      "    socket.create_connection(('169.254.169.254', 80), timeout=10)\n"
                      "except OSError as e:\n"
                      "    print('refused', type(e).__name__)\n")
    result = run_local(str(script), "--env", "dtable_web_url=http://seatable.test")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("refused ConnectionRefusedError\n"
                             "[egress refused: 169.254.169.254:80 (link-local address)]\n")


def test_the_egress_policy_applies(runner_image: str, tmp_path: Path) -> None:
    """The seatable mode, as in a real run: the script's own server is allowed, anything else refused and reported."""
    script = tmp_path / "net.py"
    script.write_text("import requests\n"
                      "r = requests.get('http://169.254.169.254/', timeout=10)\n"
                      "print(r.status_code, r.headers['X-Egress-Refused'])\n")
    result = run_local(str(script), "--env", "dtable_web_url=http://seatable.test", network="seatable")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("403 not on the allow list\n"
                             "[egress refused: 169.254.169.254:80 (not on the allow list)]\n")


def test_a_failing_script_exits_1_with_its_traceback(runner_image: str, tmp_path: Path) -> None:
    script = tmp_path / "bad.py"
    script.write_text("raise ValueError('no such row')\n")
    result = run_local(str(script))
    assert result.returncode == 1
    assert "ValueError: no such row" in result.stdout
    assert result.stderr.startswith("--- failed: exited, return code 1,")


def test_bad_arguments_are_one_readable_line(tmp_path: Path) -> None:
    script = tmp_path / "ok.py"
    script.write_text("print(1)\n")
    bad_env = run_local(str(script), "--env", "1x=2")
    assert bad_env.returncode == 2 and bad_env.stderr == "run-local: --env needs NAME=VALUE, not '1x=2'\n"
    missing = run_local(str(tmp_path / "missing.py"))
    assert missing.returncode == 2 and missing.stderr.startswith("run-local: cannot read ")
    assert missing.stderr.count("\n") == 1
