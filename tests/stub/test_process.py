"""The stub as a real process (`python -m tests.seatable_stub`), as the demo and end-to-end tests start it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import requests

from .conftest import SECRET, web_headers

ROOT = Path(__file__).resolve().parents[2]


def test_cli_serves_until_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.seatable_stub", "--port", "0", "--secret", SECRET],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.fullmatch(r"seatable-stub listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        url = match.group(1)

        base = requests.post(f"{url}/_stub/bases", json={"name": "P"}, timeout=5).json()
        requests.post(
            f"{url}/_stub/bases/{base['uuid']}/scripts", json={"name": "p.py", "content": "x"}, timeout=5
        )
        task = requests.get(
            f"{url}/api/v2.1/dtable/{base['uuid']}/run-script/p.py/task/file/",
            headers=web_headers(),
            timeout=5,
        )
        assert task.status_code == 200
        assert requests.get(task.json()["script_url"], timeout=5).text == "x"
        # State is shared across requests (one process, threads).
        urls = requests.get(f"{url}/_stub/script-urls", timeout=5).json()["script_urls"]
        assert [u["fetch_count"] for u in urls] == [1]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_cli_requires_a_secret() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.seatable_stub"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--secret" in result.stderr
