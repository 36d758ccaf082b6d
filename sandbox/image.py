"""Build the runner image offline: Debian by mmdebstrap, the locked PyPI packages by the host's pip.

No registry is needed. The image tag is a hash of every input (the Debian suite and packages, the package lock
with its hashes, the image's own files), so an unchanged recipe is never rebuilt and the sandbox service can
compute which image it must use. The trusted entrypoint and egress relay are not part of the image: the sandbox
mounts them read-only into every runner (any image with a python3 works), so changing them needs no new image.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from runner_rootfs.finish_tree import RUNNER_FILES_MOUNT, RUNNER_UID, SITE_PACKAGES, strip_setid_bits

from sandbox import runner_lock
from sandbox.errors import SetupError
from sandbox.host import SandboxUser

IMAGE_NAME = "localhost/seatable-python-runner"
RECIPE_VERSION = "2"  # bump when the steps below change what ends up in the image
SUITE = "trixie"  # Debian 13: python3 is 3.13 (upstream's runner and SeaTable's docs promise 3.12)
DEFAULT_MIRRORS = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)
# Debian's archive keys (package debian-archive-keyring). Debian trusts them through /etc/apt/trusted.gpg.d already;
# Ubuntu's package installs them only here, so mmdebstrap is given this file as well (apt's trusted.gpg.d still counts).
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# Where the sandbox mounts the trusted entrypoint and relay, and how every runner is started: the image's own python3.
RUNNER_FILES = "/" + RUNNER_FILES_MOUNT
ENTRYPOINT = f"{RUNNER_FILES}/entrypoint.py"
ENTRYPOINT_COMMAND = ("python3", "-I", ENTRYPOINT)
# Trimmed from the tree: documentation and caches nobody reads in a runner.
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
                 "/usr/share/lintian/*")
DEFAULT_CACHE = Path("/var/cache/seatable-runner")
__all__ = ["DEFAULT_CACHE", "ENTRYPOINT_COMMAND", "IMAGE_NAME", "RUNNER_FILES", "RUNNER_UID", "SITE_PACKAGES",
           "Recipe", "RunnerImageBuilder", "default_image", "packaged_sdist_only", "runner_files_dir",
           "strip_setid_bits"]


@dataclass
class Recipe:
    """Everything that decides the image's content; its digest is the image tag."""

    lock: str  # requirements.lock: every package pinned with its hashes
    sdist_only: str  # sdist-only.txt
    debian: str  # debian-packages.txt
    finish_tree: str  # finish_tree.py: the image's own files
    extra_packages: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = DEFAULT_MIRRORS

    @classmethod
    def packaged(cls, requirements: Path | None = None, extra_packages: tuple[str, ...] = (),
                 sdist_only: tuple[str, ...] = ()) -> Recipe:
        """The installed recipe; `requirements` replaces its lock and must itself be a lock (pins and hashes)."""
        files = resources.files("runner_rootfs")
        if requirements is None:  # the packaged lock (./dev lock-runner refreshes it)
            lock = files.joinpath("requirements.lock").read_text()
        else:
            try:
                lock = requirements.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise SetupError(f"cannot read {requirements}: {exc}") from None
            if not runner_lock.is_locked(lock):
                raise SetupError(f"{requirements} is not a lock: every requirement needs ==VERSION and --hash "
                                 f"(seatable-sandbox lock-runner {requirements} makes one)")
        return cls(
            lock=lock,
            sdist_only=files.joinpath("sdist-only.txt").read_text() + "".join(f"{name}\n" for name in sdist_only),
            debian=files.joinpath("debian-packages.txt").read_text(),
            finish_tree=files.joinpath("finish_tree.py").read_text(),
            extra_packages=extra_packages,
        )

    @property
    def debian_packages(self) -> tuple[str, ...]:
        return (*runner_lock.names(self.debian), *self.extra_packages)

    @property
    def sdist_packages(self) -> list[str]:
        return runner_lock.names(self.sdist_only)

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in (RECIPE_VERSION, SUITE, " ".join(self.debian_packages), "\n".join(self.mirrors),
                     " ".join(runner_lock.PIP_TARGET), self.lock, " ".join(self.sdist_packages), self.finish_tree):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()[:16]

    def lock_digest(self) -> str:
        return hashlib.sha256(f"{self.lock}\0{self.sdist_packages}".encode()).hexdigest()[:16]

    @property
    def tag(self) -> str:
        return f"{IMAGE_NAME}:{self.digest()}"


def default_image() -> str:
    """The image the installed recipe produces; what the sandbox runs unless told otherwise."""
    return Recipe.packaged().tag


def packaged_sdist_only(extra: tuple[str, ...] = ()) -> list[str]:
    """The packages that may come as source: the packaged list plus `extra`."""
    return [*runner_lock.names(resources.files("runner_rootfs").joinpath("sdist-only.txt").read_text()), *extra]


def runner_files_dir() -> Path:
    """The installed directory holding entrypoint.py and egress_forward.py (root-owned in an installation)."""
    spec = importlib.util.find_spec("runner_rootfs.entrypoint")
    if spec is None or spec.origin is None:
        raise SetupError("the runner_rootfs package is not installed")
    return Path(spec.origin).parent


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

    def done(self) -> None:
        """The end, which is not a step of its own."""
        if not self.quiet:
            print(f"done (+{time.monotonic() - self.started:.0f}s)", flush=True)


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
        progress = Progress(total=8, quiet=self.quiet)
        self._check_tools()
        self._check_cache_dir()
        progress(f"recipe {self.recipe.digest()}")
        if not force and self.image_exists():  # without the lock: another recipe's build may hold it for minutes
            progress(f"image {self.recipe.tag} is present; nothing to build")
            return self.recipe.tag
        with self._lock():
            if self.image_exists() and not force:
                progress(f"image {self.recipe.tag} is present; nothing to build")
                self._map_ids(progress)
                return self.recipe.tag
            tarball = self.tarball()
            if force or not tarball.exists():
                self._build_tarball(tarball, progress)
            else:
                progress(f"root filesystem {tarball.name} is cached")
            self._import(tarball, progress)
            self._map_ids(progress)
            if prune:
                self._prune(tarball)
            progress.done()
        return self.recipe.tag

    def tarball(self) -> Path:
        """Where the recipe's root filesystem is cached (another recipe's build with --prune removes it)."""
        return self.cache_dir / f"rootfs-{self.recipe.digest()}.tar"

    def rootfs(self) -> Path:
        """The recipe's root filesystem tarball, built first if the cache lacks it; nothing is imported."""
        self._check_tools()
        self._check_cache_dir()
        tarball = self.tarball()
        if tarball.exists():
            return tarball
        with self._lock():
            if not tarball.exists():
                progress = Progress(total=5, quiet=self.quiet)
                self._build_tarball(tarball, progress)
                progress.done()
        return tarball

    def wheelhouse(self) -> Path:
        """Every file of the lock, hash-checked, plus the build tools: what offline installs of it read
        (build-runner's pip, and Containerfile.runner-registry given it as /wheels)."""
        self._check_cache_dir()
        with self._lock():
            return self._wheelhouse()

    def _wheelhouse(self) -> Path:
        target = self.cache_dir / f"wheels-{self.recipe.lock_digest()}"
        if not (target / ".complete").exists():
            target.mkdir(parents=True, exist_ok=True)
            lock_file = target / "requirements.lock"
            lock_file.write_text(self.recipe.lock)
            runner_lock.download(lock_file, self.recipe.sdist_packages, target, self._pip_env())
            (target / ".complete").touch()
        return target

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

    def _pip_env(self) -> dict[str, str]:
        return dict(os.environ, PIP_CACHE_DIR=str(self.cache_dir / "pip"), PIP_DISABLE_PIP_VERSION_CHECK="1")

    def _build_tarball(self, tarball: Path, progress: Progress) -> None:
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix="build-") as work:
            self._build_tree(Path(work), tarball, progress)

    def _build_tree(self, work: Path, tarball: Path, progress: Progress) -> None:
        progress(f"checking that Debian {SUITE} has {' '.join(self.recipe.debian_packages)} (mmdebstrap --simulate)")
        self._check_debian_packages(work)
        progress(f"fetching the locked Python packages for Python {runner_lock.RUNNER_PYTHON} (hash-checked)")
        wheelhouse = self._wheelhouse()
        site = work / "site-packages"
        progress("installing them with pip (host side, from the wheelhouse only)")
        lock_file = work / "requirements.lock"
        lock_file.write_text(self.recipe.lock)
        runner_lock.install(lock_file, self.recipe.sdist_packages, wheelhouse, site, self._pip_env())
        rootfs = work / "rootfs"
        progress(f"building Debian {SUITE} minbase with mmdebstrap: {' '.join(self.recipe.debian_packages)}; "
                 "adding packages and runner user, removing setuid bits, byte-compiling")
        self._mmdebstrap(rootfs, site, work)
        progress("packing the root filesystem")
        partial = tarball.with_suffix(".partial")
        _run(["tar", "-C", str(rootfs), "--numeric-owner", "--xattrs", "-cf", str(partial), "."],
             "packing the root filesystem")
        partial.replace(tarball)

    def _check_debian_packages(self, work: Path) -> None:
        """Resolve the packages and their dependencies in the suite without downloading or installing anything.

        The build's mmdebstrap installs the whole essential set before it turns to --include, so a package the
        suite lacks failed only after a minute of work; --simulate of the extract variant resolves just the
        listed packages in seconds (not --quiet: apt's "Unable to locate package" is the line to show; a
        tarball target: nothing is written)."""
        try:
            _run(self._mmdebstrap_argv("extract", work / "simulated.tar", "--simulate"),
                 "mmdebstrap failed to resolve the Debian packages", stdin=subprocess.DEVNULL)
        except SetupError as exc:
            if "is not signed" not in str(exc) or DEBIAN_KEYRING.is_file():
                raise
            raise SetupError(f"{exc} (this host lacks Debian's archive keys: "
                             "apt-get install debian-archive-keyring)") from None

    def _mmdebstrap_argv(self, variant: str, target: Path, *options: str) -> list[str]:
        return ["mmdebstrap", f"--variant={variant}", "--mode=root", *keyring_options(),
                f"--include={','.join(self.recipe.debian_packages)}", *options,
                SUITE, str(target), *self.recipe.mirrors]

    def _mmdebstrap(self, rootfs: Path, site: Path, work: Path) -> None:
        finish = work / "finish_tree.py"
        finish.write_text(self.recipe.finish_tree)
        hooks = [
            f'mkdir -p "$1/{Path(SITE_PACKAGES).parent}" && mv {shlex.quote(str(site))} "$1/{SITE_PACKAGES}"',
            f'{shlex.quote(sys.executable)} {shlex.quote(str(finish))} "$1"',
            # Byte-code by the runner's own Python (the host's is another version); a file that does not compile
            # (a package's Python 2 test data) just stays without byte-code.
            f'chroot "$1" /usr/bin/python3 -m compileall -q -j0 /{SITE_PACKAGES} >/dev/null 2>&1 || true',
        ]
        argv = self._mmdebstrap_argv("minbase", rootfs, "--quiet",
                                     *(f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES),
                                     "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                                     *(f"--customize-hook={hook}" for hook in hooks))
        _run(argv, "mmdebstrap failed", stdin=subprocess.DEVNULL)

    def _import(self, tarball: Path, progress: Progress) -> None:
        progress(f"importing into {self.user.name}'s Podman storage as {self.recipe.tag}")
        changes = [
            f"USER {RUNNER_UID}:{RUNNER_UID}",
            "WORKDIR /tmp",
            "ENV LANG=C.UTF-8",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            # The sandbox mounts the entrypoint at run time; without that mount this fails with a clear message.
            "ENTRYPOINT " + json.dumps(list(ENTRYPOINT_COMMAND)),
            f"LABEL io.seatable.runner.recipe={self.recipe.digest()}",
            f"LABEL io.seatable.runner.python={runner_lock.RUNNER_PYTHON}",
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

    def _map_ids(self, progress: Progress) -> None:
        """Make the one id-shifted copy of the image that every runner's fixed mapping uses.

        Rootless overlay cannot shift ids when mounting, so the first container with a mapping
        copies and chowns the image (tens of seconds); done here, no run waits for it."""
        from sandbox.host import podman_info
        from sandbox.identity import IdMapping

        size = IdMapping.from_podman_info(podman_info(self.user)).size
        progress(f"preparing the image for the runners' id mapping (0:1:{size}; once per image)")
        name = f"seatable-idmap-{self.recipe.digest()}-{os.getpid()}"
        mapping = f"0:1:{size}"
        created = self.user.run(["podman", "create", "--name", name, "--uidmap", mapping, "--gidmap", mapping,
                                 "--network", "none", self.recipe.tag])
        self.user.run(["podman", "rm", "--force", name])
        if created.returncode != 0:
            raise SetupError(f"podman create with the runners' id mapping failed: {_last_line(created.stderr)}")

    def _prune(self, keep: Path) -> None:
        """Keep the newest tarball and wheelhouse only; drop images of other recipes (a running sandbox may use one)."""
        for old in self.cache_dir.glob("rootfs-*.tar"):
            if old != keep:
                old.unlink()
        for old in self.cache_dir.glob("wheels-*"):
            if old.name != f"wheels-{self.recipe.lock_digest()}":
                shutil.rmtree(old, ignore_errors=True)
        listed = self.user.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_NAME])
        for ref in listed.stdout.split():
            if ref not in (self.recipe.tag, f"{IMAGE_NAME}:latest"):
                self.user.run(["podman", "rmi", "--force", ref])


def keyring_options() -> list[str]:
    """mmdebstrap's --keyring for Debian's archive, where the file is (see DEBIAN_KEYRING)."""
    return [f"--keyring={DEBIAN_KEYRING}"] if DEBIAN_KEYRING.is_file() else []


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
