"""seatable-sandbox build-runner: offline build, content-hash cache, one-line errors."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.host import SandboxUser
from sandbox.image import IMAGE_NAME, Recipe
from sandbox.podman_api import PodmanAPI
from tests.support.podman import VENV_BIN


def build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "seatable-sandbox"), "build-runner", *args],
                          capture_output=True, text=True, timeout=900, check=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("seatable-sandbox build-runner: ")
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_second_build_reuses_the_image(runner_image: str) -> None:
    started = time.monotonic()
    result = build()
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "nothing to build" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == runner_image
    assert elapsed < 15, f"cached build took {elapsed:.1f} s"


@pytest.fixture
def fresh_cache() -> Iterator[Path]:
    """A cache of this test's own: no rootfs, no wheelhouse, and no waiting for another build's lock."""
    with tempfile.TemporaryDirectory(prefix="runner-cache-") as path:
        yield Path(path)


@pytest.mark.timeout(2 * 900 + 60)  # the whole offline build, then the cached one (each may take build()'s 900 s)
def test_build_from_scratch_then_cached(fresh_cache: Path, tmp_path: Path, podman: PodmanAPI,
                                        sandbox_user: SandboxUser) -> None:
    """A new recipe (one more Debian package) in an empty cache: the whole offline build.

    Every step runs (pip, mmdebstrap, the tree's fix-ups, tar, podman import) on a small recipe: one wheel instead
    of the runner's 200 MB, which only made this test unpack, pack and import that much more. `./dev setup` builds
    the real recipe.
    """
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six\n")
    tag = Recipe.packaged(requirements=requirements, extra_packages=("file",)).tag
    argv = ("--cache-dir", str(fresh_cache), "--extra-package", "file", "--requirements", str(requirements))
    try:
        first = build(*argv)
        assert first.returncode == 0, first.stderr
        for step in ("pip", "mmdebstrap", "setuid", "importing", "done"):
            assert step in first.stdout, first.stdout
        assert first.stdout.strip().splitlines()[-1] == tag
        assert podman.image_exists(tag)
        assert list(fresh_cache.glob("rootfs-*.tar"))

        started = time.monotonic()
        second = build(*argv)
        assert second.returncode == 0, second.stderr
        assert "nothing to build" in second.stdout
        assert time.monotonic() - started < 15
    finally:
        sandbox_user.run(["podman", "rmi", "--force", tag])
        # the build tags :latest too; point it back at the image in use
        from sandbox.image import default_image
        sandbox_user.run(["podman", "tag", default_image(), f"{IMAGE_NAME}:latest"])


def test_missing_debian_package_is_one_clear_line(sandbox_account: SandboxUser, fresh_cache: Path) -> None:
    # One small wheel, not the runner's 200 MB: pip runs before mmdebstrap, and mmdebstrap's error is the point.
    # A cache of its own: mmdebstrap takes minutes to fail, and would hold the shared cache's lock all along.
    requirements = fresh_cache / "requirements.txt"
    requirements.write_text("six\n")
    result = build("--extra-package", "no-such-package-seatable-xyz", "--cache-dir", str(fresh_cache),
                   "--requirements", str(requirements))
    assert_one_line_error(result, "mmdebstrap failed", "no-such-package-seatable-xyz")


def test_failed_pip_install_is_one_clear_line(sandbox_account: SandboxUser, tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("no-such-distribution-seatable-xyz==1.0\n")
    result = build("--requirements", str(requirements))
    assert_one_line_error(result, "pip could not install", "no-such-distribution-seatable-xyz")


def test_unwritable_cache_dir_is_one_clear_line(sandbox_account: SandboxUser, tmp_path: Path) -> None:
    readonly = tmp_path / "ro"
    readonly.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)], check=True)
    try:
        result = build("--cache-dir", str(readonly / "cache"))
    finally:
        subprocess.run(["umount", str(readonly)], check=True)
    assert_one_line_error(result, "not writable", str(readonly / "cache"))
