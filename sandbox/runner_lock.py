"""The runner's Python packages pinned by content: the lock, how it is made, fetched and installed.

`runner-rootfs/requirements.lock` pins every package with the sha256 of each of its files, resolved by uv for the
runner's Python and platform (not the host's 3.11). Every file a build installs is checked against it
(`--require-hashes`), so the image tag, a hash of the lock, stands for what is inside. Only the packages in
`sdist-only.txt` may come as source; everything else must be a wheel, so nothing is compiled for the wrong Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from sandbox.errors import SetupError

RUNNER_PYTHON = "3.13"  # Debian trixie's python3
GLIBC = (2, 40)  # wheels up to this manylinux level (trixie has glibc 2.41; uv knows targets up to 2.40)
UV_PLATFORM = f"x86_64-manylinux_{GLIBC[0]}_{GLIBC[1]}"
# pip does not widen one --platform to the older manylinux levels: every level is named.
PIP_TARGET = ("--python-version", RUNNER_PYTHON, "--implementation", "cp",
              *(arg for tag in ("manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64",
                                *(f"manylinux_2_{minor}_x86_64" for minor in range(5, GLIBC[1] + 1)))
                for arg in ("--platform", tag)))
# What pip's isolated build of an sdist-only package needs; fetched into the wheelhouse so builds run offline.
BUILD_TOOLS = ("setuptools>=61", "wheel")
LOCK_COMMAND = "./dev lock-runner"


def requirement_lines(text: str) -> list[str]:
    """Requirement entries of a requirements file, continuation lines joined; comments and options dropped."""
    entries: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        continued = line.endswith("\\")
        current += " " + line.rstrip("\\").strip()
        if continued:
            continue
        entry, current = current.strip(), ""
        if entry and not entry.startswith("-"):
            entries.append(entry)
    return entries


def is_locked(text: str) -> bool:
    """Every requirement pinned (==) with at least one hash: usable with --require-hashes as it is."""
    entries = requirement_lines(text)
    return bool(entries) and all("==" in entry and "--hash=" in entry for entry in entries)


def names(text: str) -> list[str]:
    """The package names of a plain list (sdist-only.txt, debian-packages.txt): one a line, # comments."""
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def format_args(sdist_only: Iterable[str]) -> list[str]:
    """Wheels only, except the named sdist-only packages (the order matters to pip: :all: first)."""
    allowed = ",".join(sdist_only)
    return ["--only-binary=:all:", *([f"--no-binary={allowed}"] if allowed else [])]


def uv_binary() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not os.access(found, os.X_OK):
        raise SetupError("uv is needed to lock requirements: install it (pip install uv), or pass a lock file "
                         "whose every requirement has --hash")
    return found


def lock(requirements: Path, output: Path, sdist_only: Iterable[str], cache_dir: Path | None = None,
         upgrade: bool = False) -> str:
    """Resolve `requirements` for the runner's Python with uv into `output` (pins and hashes); return the lock."""
    argv = [uv_binary(), "pip", "compile", "--quiet", "--generate-hashes", "--python-version", RUNNER_PYTHON,
            "--python-platform", UV_PLATFORM, "--custom-compile-command", LOCK_COMMAND,
            "--only-binary", ":all:", *(arg for name in sdist_only for arg in ("--no-binary", name)),
            *(["--upgrade"] if upgrade else []), "-o", str(output), str(requirements)]
    env = dict(os.environ)
    if cache_dir is not None:
        env["UV_CACHE_DIR"] = str(cache_dir / "uv")
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise SetupError(f"could not lock {requirements}: {_uv_error(result.stderr or result.stdout)}")
    return output.read_text()


def download(lock_file: Path, sdist_only: list[str], wheelhouse: Path, env: dict[str, str]) -> None:
    """Every file of the lock (hash-checked) and the build tools, for offline installs from `wheelhouse`."""
    pip = [sys.executable, "-m", "pip"]
    _pip([*pip, "download", "-q", "--no-deps", "--require-hashes", *PIP_TARGET, *format_args(sdist_only),
          "-d", str(wheelhouse), "-r", str(lock_file)], "pip could not download the runner's packages", env)
    if sdist_only:
        _pip([*pip, "download", "-q", "--only-binary=:all:", "-d", str(wheelhouse), *BUILD_TOOLS],
             "pip could not download the build tools", env)


def install(lock_file: Path, sdist_only: list[str], wheelhouse: Path, site: Path, env: dict[str, str]) -> None:
    """The lock into `site` for the runner's Python, from the wheelhouse only, every file hash-checked again."""
    _pip([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheelhouse),
          "--no-deps", "--require-hashes", "--no-compile", "--target", str(site), *PIP_TARGET,
          *format_args(sdist_only), "-r", str(lock_file)], "pip could not install the runner's packages", env)


def _pip(argv: list[str], what: str, env: dict[str, str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise SetupError(f"{what}: {_pip_error(result.stderr or result.stdout)}")


def _pip_error(text: str) -> str:
    """pip's own sentence: the ERROR: line (not the 'Location ... ignored' warnings), else the last line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if any("DO NOT MATCH THE HASHES" in line for line in lines):
        package = next((line.split(" from ")[0] for line in lines if " from " in line and "==" in line), "a package")
        return f"{package} does not match the lock's hash (the file pip got is not the one the lock names)"
    errors = [line for line in lines if line.startswith("ERROR: ")]
    return (errors or lines or ["(no output)"])[-1]


def _uv_error(text: str) -> str:
    """uv's reason as one line: it may draw a tree and wrap the sentence; the sentence starting "Because" is it."""
    words = " ".join(line.strip(" \u00d7\u2570\u2500\u25b6\u2502\u251c") for line in text.splitlines())
    words = " ".join(words.split())
    if "Because " in words:
        words = words[words.index("Because "):]
    return words[:400] or "(no output)"
