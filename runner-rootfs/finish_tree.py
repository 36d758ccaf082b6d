"""The runner image's own files, laid over a Debian tree that has python3 and the runner's packages.

One list for every way the runner image is made: `seatable-sandbox build-runner` runs this on its mmdebstrap tree
(host side, `python3 finish_tree.py ROOT`), Containerfile.runner-registry runs it inside the image (`ROOT=/`).
Idempotent. Standard library only; imports nothing from the services.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

RUNNER_UID = 1000
RUNNER_USER = "seatable"
RUNNER_HOME = "/home/seatable"  # upstream's; HOME in a run is /tmp (writable), this one stays empty and read-only
SITE_PACKAGES = "opt/runner/site-packages"
# Where the sandbox mounts its trusted entrypoint and egress relay (read-only) at run time.
RUNNER_FILES_MOUNT = "opt/seatable-runner"
JUNK = ("var/cache/apt", "var/lib/apt/lists", "var/log")


def finish(root: Path) -> None:
    name_resolution(root)
    python_path(root)
    runner_user(root)
    # Upstream's scripts live in /scripts; here that is a directory on the runner's tmpfs.
    scripts = root / "scripts"
    if not scripts.is_symlink():
        scripts.symlink_to("/tmp/scripts")
    (root / RUNNER_FILES_MOUNT).mkdir(parents=True, exist_ok=True)
    for junk in JUNK:
        path = root / junk
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            path.mkdir()
    strip_setid_bits(root)


def name_resolution(root: Path) -> None:
    """No resolver and no names but loopback: every name is resolved by the egress proxy's policy."""
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text("# names are resolved by the sandbox's egress proxy\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost runner\n::1\tlocalhost ip6-localhost\n")


def python_path(root: Path) -> None:
    """-I ignores PYTHONPATH, but site still reads .pth files from Debian's dist-packages."""
    dist_packages = root / "usr/lib/python3/dist-packages"
    dist_packages.mkdir(parents=True, exist_ok=True)
    (dist_packages / "runner.pth").write_text(f"/{SITE_PACKAGES}\n")


def runner_user(root: Path) -> None:
    _add_line(root / "etc/passwd", RUNNER_USER,
              f"{RUNNER_USER}:x:{RUNNER_UID}:{RUNNER_UID}:SeaTable script:{RUNNER_HOME}:/usr/sbin/nologin\n")
    _add_line(root / "etc/group", RUNNER_USER, f"{RUNNER_USER}:x:{RUNNER_UID}:\n")
    _add_line(root / "etc/shadow", RUNNER_USER, f"{RUNNER_USER}:!:19000::::::\n")


def strip_setid_bits(root: Path) -> None:
    """No setuid/setgid file in the tree (one file system only: inside an image build, / has /proc too)."""
    device = root.stat().st_dev
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(dirpath, d).lstat().st_dev == device]
        for name in files:
            path = Path(dirpath, name)
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                path.chmod(stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))


def _add_line(path: Path, name: str, line: str) -> None:
    existing = path.read_text() if path.exists() else ""
    if any(entry.split(":", 1)[0] == name for entry in existing.splitlines()):
        return
    with open(path, "a") as handle:
        if existing and not existing.endswith("\n"):
            handle.write("\n")
        handle.write(line)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: finish_tree.py ROOT")
    finish(Path(sys.argv[1]))
