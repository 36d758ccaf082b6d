"""Image sizes of the deployment images, and the runner against an alpine-based equivalent.

Run as root: `./dev bench image_sizes` builds (or reuses) the compose images and the Containerfile runner,
prints the table and writes it to BENCHMARKS.md. tests/deployment/test_images.py measures the same way and
checks the limits and the table's format, without writing the repository.

The alpine image cannot be pulled here (no registry), so its size is an estimate, built from measured and
published numbers (see ALPINE_PYTHON_MB and estimate_alpine_runner): the Python packages are the same wheels
(musllinux wheels of numpy/scipy/pandas/Pillow bundle the same libraries as the manylinux ones, so their
installed size is taken as equal to ours, measured), on top of alpine + its python3 package.
"""

from __future__ import annotations

import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.report import machine, update_section
from sandbox.image import DEFAULT_CACHE, SITE_PACKAGES, Recipe, RunnerImageBuilder
from tests.deployment.images import CACHE, LABEL, REPO, Podman, digest
from tests.deployment.stack import build_images, prune

TITLE = "Image sizes (deployment)"
MB = 1_000_000
# alpine:3.19 base ~7.4 MB; python3 3.11 (Alpine v3.19, pkgs.alpinelinux.org) 23.7 MiB installed plus its
# byte-code (python3-pyc, split out since Alpine 3.18) and shared-library dependencies (libcrypto3, libssl3,
# sqlite-libs, libffi, mpdecimal, xz, ...): ~50 MB together, as the official python:3.11-alpine image is.
ALPINE_PYTHON_MB = 50.0
LIMIT = 1.20
RUNNER = "runner (Containerfile.runner)"
OWN_LAYERS = ("scheduler", "sandbox", "mariadb")


def site_packages_bytes(tarball: Path) -> int:
    """Installed size of the runner's Python packages (with byte-code), measured in the rootfs tarball."""
    total = 0
    with tarfile.open(tarball) as tar:
        for member in tar:
            if member.isfile() and member.name.lstrip("./").startswith(SITE_PACKAGES + "/"):
                total += member.size
    return total


def estimate_alpine_runner(site_packages: int) -> float:
    return site_packages / MB + ALPINE_PYTHON_MB


def build_runner(podman: Podman, tarball: Path, recipe: str) -> str:
    """Containerfile.runner on the cached rootfs tarball (a hard link in a context the sandbox user reads)."""
    containerfile = (REPO / "containers" / "Containerfile.runner").read_text()
    tag = f"localhost/seatable-deploy-runner:{digest(containerfile, recipe)}"
    if podman.exists(tag):
        return tag
    context = CACHE / f"runner-context-{recipe}"
    context.mkdir(parents=True, exist_ok=True)
    link = context / "rootfs.tar"
    if not link.exists():
        os.link(tarball, link)
    (context / "Containerfile").write_text(containerfile)
    for path in (CACHE, context):
        path.chmod(0o755)
    podman.run("build", "-q", "--network", "none", "-f", str(context / "Containerfile"),
               "--build-arg", f"RECIPE={recipe}", "--label", f"{LABEL}=runner", "-t", tag, str(context), timeout=900)
    prune(podman, tag, "runner")
    return tag


@dataclass
class ImageSizes:
    sizes: dict[str, int]  # image -> bytes, as `podman image inspect` reports them
    base: int
    packages: int  # the runner's site-packages with byte-code
    built_in: float  # seconds this run spent building (0 for cached images)
    runner_check: str  # what the trimmed runner printed importing what scripts import

    @property
    def ours_mb(self) -> float:
        return self.sizes[RUNNER] / MB

    @property
    def alpine_mb(self) -> float:
        return estimate_alpine_runner(self.packages)

    def own_mb(self, name: str) -> float:
        return (self.sizes[name] - self.base) / MB


def measure(podman: Podman) -> ImageSizes:
    recipe = Recipe.packaged()
    started = time.monotonic()
    # Built again if the cache lost it: `./dev setup` finds the image in Podman's storage and builds nothing.
    tarball = RunnerImageBuilder(podman.user, recipe, DEFAULT_CACHE).rootfs()
    images = build_images(podman)
    runner = build_runner(podman, tarball, recipe.digest())
    built_in = time.monotonic() - started
    check = podman.run("run", "--rm", "--network", "none", "--label", f"{LABEL}=probe", "--entrypoint",
                       "/usr/bin/python3", runner, "-c",
                       "import pandas, scipy, seatable_api, PIL, qrcode, barcode, openai; print('ok')")
    base = podman.size(images.base)
    sizes = {
        "base (Debian bookworm minbase + python3, mmdebstrap)": base,
        "scheduler (Containerfile.scheduler)": podman.size(images.scheduler),
        "sandbox (Containerfile.sandbox)": podman.size(images.sandbox),
        "mariadb (Containerfile.mariadb, Debian's mariadb-server)": podman.size(images.mariadb),
        RUNNER: podman.size(runner),
        "runner (build-runner import, used by ./dev)": podman.size(recipe.tag) if podman.exists(recipe.tag) else 0,
    }
    return ImageSizes(sizes, base, site_packages_bytes(tarball), built_in, check.stdout.strip())


def render(result: ImageSizes) -> str:
    """The BENCHMARKS.md section's body."""
    rows = "\n".join(
        f"| {name} | {size / MB:.0f} MB | {result.own_mb(name):.0f} MB |" if name.startswith(OWN_LAYERS)
        else f"| {name} | {size / MB:.0f} MB | |" for name, size in result.sizes.items())
    ours, alpine = result.ours_mb, result.alpine_mb
    return f"""Measured by `./dev bench image_sizes` on {machine()}; sizes as `podman image inspect` reports
them (uncompressed). Scheduler, sandbox and MariaDB share the base layer; "own" is what each adds to it.

| Image | Size | Own layers |
|---|---|---|
{rows}

Runner against an alpine-based image with the same packages (estimated; no registry here to pull alpine):
the Python packages installed with byte-code measure {result.packages / MB:.0f} MB in our root filesystem; musllinux
wheels of the same packages bundle the same native libraries, so that part is taken as equal. Alpine plus its
python3 3.11 package (23.7 MiB installed, pkgs.alpinelinux.org, v3.19), its byte-code and shared-library
dependencies come to about {ALPINE_PYTHON_MB:.0f} MB, as the official python:3.11-alpine image does. Estimate:
{alpine:.0f} MB; ours: {ours:.0f} MB, i.e. {ours / alpine * 100 - 100:+.0f} % (limit +{LIMIT * 100 - 100:.0f} %).
Build time of all images this run: {result.built_in:.0f} s (cached images are not rebuilt).
"""


def main() -> int:
    from sandbox.host import DEFAULT_USER, lookup_user
    from tests.deployment.stack import rootless_networking

    rootless_networking()
    result = measure(Podman(lookup_user(DEFAULT_USER)))
    body = render(result)
    print(body)
    update_section(TITLE, body)
    return 0
