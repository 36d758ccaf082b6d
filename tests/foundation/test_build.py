"""seatable-sandbox build-runner: offline build, content-hash cache, hash-pinned packages, one-line errors."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import image
from sandbox.errors import SetupError
from sandbox.host import SandboxUser
from sandbox.image import IMAGE_NAME, Recipe
from sandbox.podman_api import PodmanAPI
from sandbox.runner_lock import is_locked
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
    """A plain requirements list and one more Debian package, in an empty cache: the list is locked with hashes
    for the runner's Python, then the whole offline build; the printed lock pins it again.

    Every step runs (lock, pip, mmdebstrap, the tree's fix-ups, tar, podman import) on a small recipe: one wheel
    instead of the runner's 200 MB, which only made this test unpack, pack and import that much more. `./dev setup`
    builds the real recipe (and tests/deployment/test_runner_recipe.py checks what it holds).
    """
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six\n")
    first = build("--cache-dir", str(fresh_cache), "--requirements", str(requirements), "--extra-package", "file")
    tag = first.stdout.strip().splitlines()[-1] if first.returncode == 0 else ""
    try:
        assert first.returncode == 0, first.stderr
        locked = next(line for line in first.stdout.splitlines() if line.startswith("locked "))
        lock = Path(locked.split(" into ")[1].split(" (")[0])
        assert is_locked(lock.read_text()) and "six==" in lock.read_text()
        for step in ("--simulate", "hash-checked", "pip", "mmdebstrap", "setuid", "importing", "done"):
            assert step in first.stdout, first.stdout
        assert tag == Recipe.packaged(requirements=lock, extra_packages=("file",)).tag
        assert podman.image_exists(tag)
        assert list(fresh_cache.glob("rootfs-*.tar"))
        check = sandbox_user.run(["podman", "run", "--rm", "--network", "none", "--entrypoint", "python3", tag, "-I",
                                  "-c", "import sys, six; print(sys.version_info[:2])"])
        assert check.stdout.strip() == "(3, 13)", check.stderr

        started = time.monotonic()
        second = build("--cache-dir", str(fresh_cache), "--requirements", str(lock), "--extra-package", "file")
        assert second.returncode == 0, second.stderr
        assert "nothing to build" in second.stdout and "locked " not in second.stdout
        assert second.stdout.strip().splitlines()[-1] == tag
        assert time.monotonic() - started < 15
    finally:
        if tag:
            sandbox_user.run(["podman", "rmi", "--force", tag])
        # the build tags :latest too; point it back at the image in use
        from sandbox.image import default_image
        sandbox_user.run(["podman", "tag", default_image(), f"{IMAGE_NAME}:latest"])


def test_missing_debian_package_is_one_clear_line(sandbox_account: SandboxUser, fresh_cache: Path) -> None:
    """The package selection is resolved (mmdebstrap --simulate) before anything is fetched or installed: the
    error comes before pip and the build's mmdebstrap, which would install the essential set first."""
    # A cache of its own: no waiting for the shared cache's lock while another recipe builds.
    requirements = fresh_cache / "requirements.txt"
    requirements.write_text("six\n")
    result = build("--extra-package", "no-such-package-seatable-xyz", "--cache-dir", str(fresh_cache),
                   "--requirements", str(requirements))
    assert_one_line_error(result, "mmdebstrap failed", "no-such-package-seatable-xyz")
    assert "mmdebstrap --simulate" in result.stdout, result.stdout
    assert "fetching the locked Python packages" not in result.stdout, result.stdout


def test_an_archive_without_trusted_keys_is_one_line_naming_debians_keyring(
        sandbox_account: SandboxUser, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host without Debian's archive keys (Ubuntu until debian-archive-keyring is installed) fails at the resolve
    step, saying which package brings them. Here apt is given an empty directory of trusted keys instead."""
    untrusted = fresh_cache / "no-keys"
    untrusted.mkdir()
    monkeypatch.setattr(image, "DEBIAN_KEYRING", fresh_cache / "no-such-keyring.gpg")
    monkeypatch.setattr(image, "keyring_options", lambda: [f"--keyring={untrusted}"])
    builder = image.RunnerImageBuilder(sandbox_account, Recipe.packaged(), fresh_cache, quiet=True)
    with pytest.raises(SetupError) as raised:
        builder.rootfs()  # the build's first step, without the image that is present already
    message = str(raised.value)
    assert "\n" not in message and message.startswith("mmdebstrap failed to resolve the Debian packages"), message
    assert "is not signed" in message and "apt-get install debian-archive-keyring" in message, message


def test_a_list_that_cannot_be_locked_is_one_clear_line(sandbox_account: SandboxUser, tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("no-such-distribution-seatable-xyz==1.0\n")
    result = build("--requirements", str(requirements))
    assert_one_line_error(result, "could not lock", "no-such-distribution-seatable-xyz")


def test_a_file_that_does_not_match_the_locks_hash_is_refused(sandbox_account: SandboxUser, tmp_path: Path,
                                                              fresh_cache: Path) -> None:
    """--require-hashes: a package whose file is not the one the lock names never reaches the image."""
    lock = tmp_path / "requirements.lock"
    lock.write_text("idna==3.7 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    result = build("--cache-dir", str(fresh_cache), "--requirements", str(lock))
    assert_one_line_error(result, "pip could not download", "idna")
    assert "hash" in result.stderr.lower()


def test_unwritable_cache_dir_is_one_clear_line(sandbox_account: SandboxUser, tmp_path: Path) -> None:
    readonly = tmp_path / "ro"
    readonly.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)], check=True)
    try:
        result = build("--cache-dir", str(readonly / "cache"))
    finally:
        subprocess.run(["umount", str(readonly)], check=True)
    assert_one_line_error(result, "not writable", str(readonly / "cache"))
