"""Images for the offline compose test: a local Debian base made with mmdebstrap, then `podman build`.

No registry is reachable here, so the Containerfiles' `BASE_IMAGE` is a base we build ourselves,
with the runner recipe's pieces (mirrors, trimmed paths, setid stripping). The services' base is Debian bookworm
(their Python is the host's 3.11); the runner's registry variant gets a trixie base with the runner's Debian
packages. Every image is tagged with a hash of its inputs, so a second run rebuilds nothing that did not change.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sandbox.host import SandboxUser
from sandbox.image import DPKG_EXCLUDES, _run, keyring_options, strip_setid_bits

REPO = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/seatable-deploy-test")
LABEL = "io.seatable.deploy-test"  # on every image and container this test makes
BASE_NAME = "localhost/seatable-deploy-base"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "tzdata")
BASE_VERSION = "1"
SERVICES_SUITE = "bookworm"


def mirrors(suite: str) -> tuple[str, ...]:
    return (f"deb http://deb.debian.org/debian {suite} main", f"deb http://deb.debian.org/debian {suite}-updates main",
            f"deb http://deb.debian.org/debian-security {suite}-security main")
# What each Containerfile needs from the repository (the build context is a staging copy of these).
CONTEXT_PATHS = ("pyproject.toml", "README.md", "pipeline_config", "pipeline_contract", "scheduler", "sandbox",
                 "httpworker", "observability", "runner-rootfs", "containers")


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def tree_digest(root: Path, paths: tuple[str, ...]) -> str:
    """Content hash of files under `paths` (sorted, names included); caches skip byte-code."""
    h = hashlib.sha256()
    for top in paths:
        start = root / top
        files = [start] if start.is_file() else sorted(p for p in start.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@dataclass
class Podman:
    """`podman` as the sandbox user: images land in the storage its API socket serves."""

    user: SandboxUser

    def run(self, *argv: str, timeout: float = 900, check: bool = True,
            stdin: object = None) -> subprocess.CompletedProcess[str]:
        result = self.user.run(["podman", *argv], timeout=timeout, stdin=stdin)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(argv)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result

    def exists(self, ref: str) -> bool:
        return self.run("image", "exists", ref, check=False).returncode == 0

    def size(self, ref: str) -> int:
        out = self.run("image", "inspect", "--format", "{{.Size}}", ref).stdout.strip()
        return int(out)

    def history_json(self, ref: str) -> list[dict[str, object]]:
        data: list[dict[str, object]] = json.loads(self.run("image", "history", "--format", "json", ref).stdout)
        return data


def build_base(podman: Podman, suite: str = SERVICES_SUITE, packages: tuple[str, ...] = BASE_PACKAGES,
               name: str = BASE_NAME) -> str:
    """Debian minbase + `packages` (python3 + python3-venv ...), imported into the sandbox user's storage."""
    tag = f"{name}:{digest(BASE_VERSION, suite, ' '.join(packages), *mirrors(suite), *DPKG_EXCLUDES)}"
    if podman.exists(tag):
        return tag
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="base-") as work:
        rootfs = Path(work) / "rootfs"
        _run(["mmdebstrap", "--variant=minbase", "--mode=root", "--quiet", *keyring_options(),
              f"--include={','.join(packages)}",
              *(f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES),
              "--dpkgopt=path-include=/usr/share/doc/*/copyright",
              suite, str(rootfs), *mirrors(suite)], "mmdebstrap failed", stdin=subprocess.DEVNULL)
        # apt stays usable (images built on this base install packages), but without its caches.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
            (rootfs / junk).mkdir(parents=True)
        strip_setid_bits(rootfs)
        tarball = Path(work) / "base.tar"
        _run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tarball), "."], "packing the base")
        with open(tarball, "rb") as data:
            result = podman.user.run(["podman", "import", "--quiet", "--change", "CMD [\"/bin/bash\"]",
                                      "--change", f"LABEL {LABEL}=base", "-", tag], stdin=data, text=False)
        if result.returncode != 0:
            raise AssertionError(f"podman import of the base failed: {result.stderr!r}")
    return tag


def wheelhouse(user: SandboxUser) -> Path:
    """The project's dependencies (and build backend) as wheels for the images' offline `pip install`.

    Downloaded by the host's pip (the containers' pip cannot verify TLS here); keyed by pyproject.toml.
    """
    key = digest((REPO / "pyproject.toml").read_bytes())
    target = CACHE / f"wheels-{key}"
    if not (target / ".complete").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        target.mkdir(exist_ok=True)
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        _run([*pip, "wheel", "-q", "-w", str(target), "--no-deps", str(REPO)], "pip wheel of the project")
        for old in target.glob("seatable_pipeline-*.whl"):
            old.unlink()  # the project itself comes from the build context, only its dependencies from here
        _run([*pip, "download", "-q", "-d", str(target), "--only-binary=:all:", "--python-version", "3.11",
              "setuptools>=61", "wheel", *project_dependencies()], "pip download of the dependencies")
        (target / ".complete").touch()
    _readable(target)
    return target


def project_dependencies() -> list[str]:
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return list(data["project"]["dependencies"])


def build_context(user: SandboxUser) -> Path:
    """A copy of what the Containerfiles COPY, where the sandbox user can read it (the checkout may not be)."""
    key = tree_digest(REPO, CONTEXT_PATHS)
    target = CACHE / f"context-{key}"
    if not target.exists():
        partial = Path(tempfile.mkdtemp(dir=CACHE, prefix="context-"))
        for name in CONTEXT_PATHS:
            source = REPO / name
            if source.is_dir():
                shutil.copytree(source, partial / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc",
                                                                                     "build", "*.egg-info"))
            else:
                shutil.copy2(source, partial / name)
        partial.rename(target)
    _readable(target)
    return target


def _readable(path: Path) -> None:
    CACHE.chmod(0o755)
    subprocess.run(["chmod", "-R", "a+rX", str(path)], check=True)
