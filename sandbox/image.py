"""Build the runner image offline: Debian minbase by mmdebstrap, PyPI wheels by the host's pip.

No registry is needed. The image tag is a hash of every input, so an unchanged recipe is
never rebuilt and the sandbox service can compute which image it must use.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from sandbox.errors import SetupError
from sandbox.host import SandboxUser

IMAGE_NAME = "localhost/seatable-python-runner"
RECIPE_VERSION = "1"  # bump when the steps below change what ends up in the image
SUITE = "bookworm"
DEFAULT_MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
DEBIAN_PACKAGES = ("python3", "libseccomp2", "tzdata", "ca-certificates")
PIP_PLATFORM = ("--python-version", "3.11", "--implementation", "cp", "--only-binary=:all:",
                "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
                "--platform", "manylinux_2_28_x86_64")
RUNNER_UID = 1000
SITE_PACKAGES = "opt/runner/site-packages"
ENTRYPOINT = "/opt/runner/entrypoint.py"
# Trimmed from the tree: documentation and caches nobody reads in a runner.
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
                 "/usr/share/lintian/*")
DEFAULT_CACHE = Path("/var/cache/seatable-runner")


@dataclass
class Recipe:
    requirements: str
    sdist_wheels: str
    entrypoint: str
    egress_forward: str = ""
    extra_packages: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = DEFAULT_MIRRORS

    @classmethod
    def packaged(cls, requirements: Path | None = None, extra_packages: tuple[str, ...] = ()) -> Recipe:
        files = resources.files("runner_rootfs")
        return cls(
            requirements=requirements.read_text() if requirements else files.joinpath("requirements.txt").read_text(),
            sdist_wheels=files.joinpath("sdist-wheels.txt").read_text(),
            entrypoint=files.joinpath("entrypoint.py").read_text(),
            egress_forward=files.joinpath("egress_forward.py").read_text(),
            extra_packages=extra_packages,
        )

    @property
    def debian_packages(self) -> tuple[str, ...]:
        return DEBIAN_PACKAGES + self.extra_packages

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in (RECIPE_VERSION, SUITE, " ".join(self.debian_packages), "\n".join(self.mirrors),
                     " ".join(PIP_PLATFORM), self.requirements, self.sdist_wheels, self.entrypoint,
                     self.egress_forward):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()[:16]

    @property
    def tag(self) -> str:
        return f"{IMAGE_NAME}:{self.digest()}"


def default_image() -> str:
    """The image the installed recipe produces; what the sandbox runs unless told otherwise."""
    return Recipe.packaged().tag


@dataclass
class Progress:
    total: int
    step: int = 0
    started: float = field(default_factory=time.monotonic)
    quiet: bool = False

    def __call__(self, text: str) -> None:
        self.step += 1
        if not self.quiet:
            print(f"[{self.step}/{self.total}] {text} (+{time.monotonic() - self.started:.0f}s)", flush=True)


class RunnerImageBuilder:
    """Builds, caches and imports the runner image into the sandbox user's Podman storage."""

    def __init__(self, user: SandboxUser, recipe: Recipe, cache_dir: Path = DEFAULT_CACHE,
                 quiet: bool = False) -> None:
        self.user = user
        self.recipe = recipe
        self.cache_dir = cache_dir
        self.quiet = quiet

    def image_exists(self) -> bool:
        return self.user.run(["podman", "image", "exists", self.recipe.tag]).returncode == 0

    def build(self, force: bool = False, prune: bool = False) -> str:
        """Return the image tag, building only what is missing."""
        progress = Progress(total=6, quiet=self.quiet)
        self._check_tools()
        self._check_cache_dir()
        if not force and self.image_exists():  # without the lock: another recipe's build may hold it for minutes
            progress(f"recipe {self.recipe.digest()}")
            progress(f"image {self.recipe.tag} is present; nothing to build")
            return self.recipe.tag
        with self._lock():
            progress(f"recipe {self.recipe.digest()}")
            if self.image_exists() and not force:
                progress(f"image {self.recipe.tag} is present; nothing to build")
                return self.recipe.tag
            tarball = self.cache_dir / f"rootfs-{self.recipe.digest()}.tar"
            if force or not tarball.exists():
                with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix="build-") as work:
                    self._build_tree(Path(work), tarball, progress)
            else:
                progress(f"root filesystem {tarball.name} is cached")
            self._import(tarball, progress)
            if prune:
                self._prune(tarball)
            progress("done")
        return self.recipe.tag

    def _check_tools(self) -> None:
        for tool, package in (("mmdebstrap", "mmdebstrap"), ("podman", "podman"), ("tar", "tar")):
            if not shutil.which(tool):
                raise SetupError(f"{tool} not found: install it with apt-get install {package}")
        if os.geteuid() != 0:
            raise SetupError("build-runner needs root (mmdebstrap builds the tree as root)")

    def _check_cache_dir(self) -> None:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.cache_dir):
                pass
        except OSError as exc:
            raise SetupError(f"cache directory {self.cache_dir} is not writable: {exc.strerror}") from None

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.cache_dir / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _build_tree(self, work: Path, tarball: Path, progress: Progress) -> None:
        site = work / "site-packages"
        progress("installing the runner's Python packages with pip (host side, wheels only)")
        self._pip_install(work, site)
        rootfs = work / "rootfs"
        progress(f"building Debian {SUITE} minbase with mmdebstrap: {' '.join(self.recipe.debian_packages)}")
        self._mmdebstrap(rootfs)
        progress("adding packages, entrypoint and runner user; removing setuid bits")
        shutil.move(str(site), str(rootfs / SITE_PACKAGES))
        self._finish_tree(rootfs)
        partial = tarball.with_suffix(".partial")
        _run(["tar", "-C", str(rootfs), "--numeric-owner", "--xattrs", "-cf", str(partial), "."],
             "packing the root filesystem")
        partial.replace(tarball)

    def _pip_install(self, work: Path, site: Path) -> None:
        env = dict(os.environ, PIP_CACHE_DIR=str(self.cache_dir / "pip"), PIP_DISABLE_PIP_VERSION_CHECK="1")
        pip = [sys.executable, "-m", "pip"]
        wheelhouse = self.cache_dir / "wheelhouse"
        sdists = [line.strip() for line in self.recipe.sdist_wheels.splitlines()
                  if line.strip() and not line.startswith("#")]
        if sdists:
            _run([*pip, "wheel", "-q", "--no-deps", "-w", str(wheelhouse), *sdists],
                 "pip could not build wheels", env=env)
        requirements = work / "requirements.txt"
        requirements.write_text(self.recipe.requirements)
        _run([*pip, "install", "-q", "--no-compile", "--target", str(site), *PIP_PLATFORM,
              "--find-links", str(wheelhouse), "-r", str(requirements)],
             "pip could not install the runner's packages", env=env)

    def _mmdebstrap(self, rootfs: Path) -> None:
        argv = ["mmdebstrap", "--variant=minbase", "--mode=root", "--quiet",
                f"--include={','.join(self.recipe.debian_packages)}",
                *(f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES),
                "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                SUITE, str(rootfs), *self.recipe.mirrors]
        _run(argv, "mmdebstrap failed", stdin=subprocess.DEVNULL)

    def _finish_tree(self, rootfs: Path) -> None:
        runner = rootfs / "opt" / "runner"
        (runner / "entrypoint.py").write_text(self.recipe.entrypoint)
        (runner / "egress_forward.py").write_text(self.recipe.egress_forward)
        # No resolver and no names but loopback: every name is resolved by the egress proxy's policy.
        (rootfs / "etc/resolv.conf").unlink(missing_ok=True)
        (rootfs / "etc/resolv.conf").write_text("# names are resolved by the sandbox's egress proxy\n")
        (rootfs / "etc/hosts").write_text("127.0.0.1\tlocalhost runner\n::1\tlocalhost ip6-localhost\n")
        # -I ignores PYTHONPATH, but site still reads .pth files from dist-packages.
        (rootfs / "usr/lib/python3/dist-packages/runner.pth").write_text(f"/{SITE_PACKAGES}\n")
        _append(rootfs / "etc/passwd", f"seatable:x:{RUNNER_UID}:{RUNNER_UID}:SeaTable script:/tmp:/usr/sbin/nologin\n")
        _append(rootfs / "etc/group", f"seatable:x:{RUNNER_UID}:\n")
        _append(rootfs / "etc/shadow", "seatable:!:19000::::::\n")
        # Upstream's scripts live in /scripts; here that is a directory on the runner's tmpfs.
        (rootfs / "scripts").symlink_to("/tmp/scripts")
        for junk in ("var/cache/apt", "var/lib/apt/lists", "var/log"):
            path = rootfs / junk
            if path.is_dir():
                shutil.rmtree(path)
                path.mkdir()
        strip_setid_bits(rootfs)
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j0", str(runner)], check=False,
                       capture_output=True)

    def _import(self, tarball: Path, progress: Progress) -> None:
        progress(f"importing into {self.user.name}'s Podman storage as {self.recipe.tag}")
        changes = [
            f"USER {RUNNER_UID}:{RUNNER_UID}",
            "WORKDIR /tmp",
            "ENV LANG=C.UTF-8",
            f'ENTRYPOINT ["/usr/bin/python3", "-I", "{ENTRYPOINT}"]',
            f"LABEL io.seatable.runner.recipe={self.recipe.digest()}",
        ]
        argv = ["podman", "import", "--quiet"]
        for change in changes:
            argv += ["--change", change]
        with open(tarball, "rb") as data:
            result = self.user.run([*argv, "-", self.recipe.tag], stdin=data, text=False)
        if result.returncode != 0:
            stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode(errors="replace")
            raise SetupError(f"podman import failed: {_last_line(stderr)}")
        self.user.run(["podman", "tag", self.recipe.tag, f"{IMAGE_NAME}:latest"])

    def _prune(self, keep: Path) -> None:
        """Keep the newest tarball only; drop images of other recipes (a running sandbox may use one)."""
        for old in self.cache_dir.glob("rootfs-*.tar"):
            if old != keep:
                old.unlink()
        listed = self.user.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_NAME])
        for ref in listed.stdout.split():
            if ref not in (self.recipe.tag, f"{IMAGE_NAME}:latest"):
                self.user.run(["podman", "rmi", "--force", ref])


def strip_setid_bits(rootfs: Path) -> None:
    for dirpath, _dirs, files in os.walk(rootfs):
        for name in files:
            path = Path(dirpath, name)
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                path.chmod(stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))


def _append(path: Path, line: str) -> None:
    with open(path, "a") as handle:
        handle.write(line)


def _run(argv: list[str], what: str, **kwargs: object) -> None:
    result = subprocess.run(argv, check=False, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise SetupError(f"{what}: {_error_line(result.stderr or result.stdout)}")


def _error_line(text: str) -> str:
    """The line that names the problem: tools put it last or prefix it with E:/ERROR:."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("E: ", "ERROR: ")) and "Location" not in line:
            return line
    return lines[-1] if lines else "(no output)"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
