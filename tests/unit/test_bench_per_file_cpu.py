"""`bench suite_cpu --by-file`'s plugin: each test file's busy CPU, wall time and test count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_each_file_gets_the_cpu_and_time_its_tests_took(tmp_path: Path) -> None:
    (tmp_path / "test_busy.py").write_text(
        "import time\n"
        "def test_spins():\n"
        "    end = time.process_time() + 0.4\n"
        "    while time.process_time() < end:\n"
        "        pass\n"
        "def test_quick():\n"
        "    pass\n")
    (tmp_path / "test_idle.py").write_text("import time\ndef test_sleeps():\n    time.sleep(0.4)\n")
    out = tmp_path / "by-file.json"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "bench.per_file_cpu",
         "-o", "addopts=", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), "SUITE_CPU_BY_FILE": str(out)},
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    seen = json.loads(out.read_text())
    assert set(seen) == {"test_busy.py", "test_idle.py"}
    busy_cpu, busy_wall, busy_tests = seen["test_busy.py"]
    _, idle_wall, idle_tests = seen["test_idle.py"]
    assert (busy_tests, idle_tests) == (2, 1)
    assert busy_cpu >= 0.35 and busy_wall >= 0.35  # the whole machine's CPU: at least the spinning test's own
    assert idle_wall >= 0.4  # (its CPU is the machine's: other workers may keep it busy meanwhile)
