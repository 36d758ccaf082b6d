"""Custom runner images (issue 15 item 7): any image with a python3 runs scripts, with the sandbox's own entrypoint.

The admin docs' recipe is `FROM seatable/seatable-python-runner` + `RUN pip install --user ...`. No registry is
reachable here, so the test image mimics upstream's runner from what we can make offline: our runner image as the
Python 3.13 base, made like upstream's alpine one (no libseccomp, no pyseccomp, no packages but the user's, an
entrypoint of its own the sandbox must not use), a non-root user `seatable` (uid 1000, home /home/seatable), and a
package installed with a real `pip install --user` as that user, offline from a local wheelhouse.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.driver import ContainerDriver
from sandbox.host import SandboxUser
from sandbox.runner_probe import probe
from tests.support.podman import CallbackReceiver, SandboxProcess

CACHE = Path("/var/cache/seatable-foundation-test")
LABEL = "io.seatable.foundation-test"  # on every image this test builds
NAME = "localhost/seatable-test-custom-runner"
PROBE_PACKAGE = "seatable_custom_probe"
CONTAINERFILE = """\
ARG BASE
FROM ${{BASE}}
USER 0:0
# Upstream's alpine runner has neither libseccomp nor pyseccomp, no Debian marker that refuses pip, its own
# entrypoint script, and keeps its packages in the user's home.
RUN rm -f /usr/lib/python3/dist-packages/runner.pth /usr/lib/x86_64-linux-gnu/libseccomp.so* \\
          /usr/lib/python3*/EXTERNALLY-MANAGED \\
 && mkdir -p /home/seatable /settings && chown 1000:1000 /home/seatable \\
 && printf '#!/bin/sh\\necho upstream entrypoint\\n' > /settings/entrypoint.sh
USER seatable
WORKDIR /settings
RUN python3 /wheels/{pip}/pip install --user --no-index --find-links /wheels {package}
ENTRYPOINT ["/bin/sh", "./entrypoint.sh"]
"""


def probe_package(target: Path) -> Path:
    """A one-module distribution, built into a wheel by the host's pip (no network)."""
    source = target / "src"
    (source / PROBE_PACKAGE).mkdir(parents=True, exist_ok=True)
    (source / PROBE_PACKAGE / "__init__.py").write_text("GREETING = 'installed with pip --user'\n")
    (source / "pyproject.toml").write_text(
        f'[project]\nname = "{PROBE_PACKAGE.replace("_", "-")}"\nversion = "1.0"\n'
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n')
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(target), str(source)], check=True, capture_output=True)
    return next(target.glob(f"{PROBE_PACKAGE}-*.whl"))


def pip_wheel(target: Path) -> Path:
    """pip itself, to run `pip install --user` in an image that has Python but no pip (as a wheel: pip.whl/pip)."""
    found = sorted(target.glob("pip-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d",
                        str(target), "pip"], check=True, capture_output=True)
        found = sorted(target.glob("pip-*.whl"))
    return found[-1]


@pytest.fixture(scope="session")
def custom_image(sandbox_user: SandboxUser, runner_image: str) -> Iterator[str]:
    CACHE.mkdir(parents=True, exist_ok=True)
    CACHE.chmod(0o755)
    wheels = CACHE / "wheels"
    wheels.mkdir(exist_ok=True)
    pip = pip_wheel(wheels)
    probe_package(wheels)
    containerfile = CONTAINERFILE.format(pip=pip.name, package=PROBE_PACKAGE.replace("_", "-"))
    tag = f"{NAME}:{hashlib.sha256((containerfile + runner_image + pip.name).encode()).hexdigest()[:16]}"
    if sandbox_user.run(["podman", "image", "exists", tag]).returncode != 0:
        with tempfile.TemporaryDirectory(dir=CACHE, prefix="context-") as context:
            Path(context, "Containerfile").write_text(containerfile)
            subprocess.run(["chmod", "-R", "a+rX", context, str(wheels)], check=True)
            built = sandbox_user.run(["podman", "build", "-q", "--network", "none", "--build-arg",
                                      f"BASE={runner_image}", "-v", f"{wheels}:/wheels:ro",
                                      "--label", f"{LABEL}=custom", "-t", tag, context], timeout=600)
            assert built.returncode == 0, built.stderr[-3000:]
    yield tag


@pytest.fixture(scope="session")
def custom_driver(driver: ContainerDriver, custom_image: str) -> ContainerDriver:
    return ContainerDriver(api=driver.api, image=custom_image, limits=driver.limits, enforcement=driver.enforcement,
                           node="foundation-tests", output_limit=driver.output_limit,
                           seccomp_profile=driver.seccomp_profile)


def run(driver: ContainerDriver, script: str) -> tuple[int | None, str]:
    from sandbox.driver import Job

    containers: list[str] = []
    result = driver.run(Job(5, script, "", {}), 60, containers.append, lambda _s: None)
    driver.cleanup(containers[0])
    return result.return_code, result.output


def test_a_pip_user_package_is_importable_with_the_images_own_python(custom_driver: ContainerDriver) -> None:
    script = (
        "import importlib.metadata, os, sys\n"
        f"import {PROBE_PACKAGE} as probe\n"
        "print(probe.GREETING)\n"
        "print(probe.__file__.startswith('/home/seatable/.local/lib/python3.'))\n"
        "print(sys.version_info >= (3, 12), os.getuid())\n"
        "names = {d.metadata['Name'] for d in importlib.metadata.distributions()}\n"
        f"print('{PROBE_PACKAGE.replace('_', '-')}' in names)\n"
        "import pyseccomp\n"
    )
    code, output = run(custom_driver, script)
    lines = output.splitlines()
    assert lines[:4] == ["installed with pip --user", "True", "True 1000", "True"], output
    assert code == 1 and lines[-1] == "ModuleNotFoundError: No module named 'pyseccomp'", output


def test_without_pyseccomp_the_profile_alone_denies_what_the_second_filter_would(
        custom_driver: ContainerDriver) -> None:
    """One seccomp filter (Podman's): every denial of the entrypoint's filter must be in it, clone's flags too."""
    script = (
        "import ctypes, os, threading, subprocess\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "SIGCHLD, NEWUSER, NEWNET, NEWNS = 17, 0x10000000, 0x40000000, 0x00020000\n"
        "def clone(flags):\n"
        "    rc = libc.syscall(56, flags | SIGCHLD, 0, 0, 0, 0)\n"
        "    if rc == 0:\n"
        "        os._exit(0)  # a child: the rule failed to deny; the parent reports it\n"
        "    if rc > 0:\n"
        "        os.waitpid(rc, 0)\n"
        "    return rc\n"
        "calls = {\n"
        "  'ptrace': lambda: libc.ptrace(0, 0, 0, 0),\n"
        "  'mount': lambda: libc.mount(b'none', b'/tmp', b'tmpfs', 0, None),\n"
        "  'unshare': lambda: libc.unshare(NEWUSER),\n"
        "  'keyctl': lambda: libc.syscall(250, 0, 0, 0, 0, 0),\n"
        "  'bpf': lambda: libc.syscall(321, 0, 0, 0),\n"
        "  'personality': lambda: libc.syscall(135, 0xffffffff),\n"
        "  'clone_newuser': lambda: clone(NEWUSER),\n"
        "  'clone_newnet': lambda: clone(NEWNET),\n"
        "  'clone_newns': lambda: clone(NEWNS),\n"
        "}\n"
        "for name, call in calls.items():\n"
        "    ctypes.set_errno(0)\n"
        "    rc = call()\n"
        "    print(name, rc, os.strerror(ctypes.get_errno()))\n"
        "status = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
        "print('filters', status['Seccomp_filters'].strip())\n"
        "t = threading.Thread(target=print, args=('thread ok',)); t.start(); t.join()\n"
        "print(subprocess.run(['echo', 'child ok'], capture_output=True, text=True).stdout, end='')\n"
        "print('plain clone', clone(0) > 0)\n"
    )
    code, output = run(custom_driver, script)
    assert code == 0, output
    lines = output.splitlines()
    for name in ("ptrace", "mount", "unshare", "keyctl", "bpf", "personality", "clone_newuser", "clone_newnet",
                 "clone_newns"):
        assert f"{name} -1 Operation not permitted" in lines, output
    assert "filters 1" in lines  # Podman's profile only: no second filter in this image
    assert lines[-3:] == ["thread ok", "child ok", "plain clone True"]


def test_the_probe_says_which_images_have_the_second_filter(driver: ContainerDriver,
                                                            custom_driver: ContainerDriver) -> None:
    ours = probe(driver)
    assert ours.second_filter and ours.python.startswith("3.13") and ours.user_site == ""
    custom = probe(custom_driver)
    assert not custom.second_filter and custom.python.startswith("3.13")
    assert custom.user_site.startswith("/home/seatable/.local/lib/python3.13/")
    assert custom.as_dict()["seccomp_second_filter"].startswith("absent")


def test_the_service_runs_the_custom_image_and_health_says_the_filter_is_absent(
        sandbox_factory: Any, receiver: CallbackReceiver, custom_image: str) -> None:
    sandbox: SandboxProcess = sandbox_factory(PYTHON_RUNNER_IMAGE=custom_image, PYTHON_RUNNER_NETWORK="seatable")
    health = sandbox.health()
    assert health["image"] == custom_image
    assert health["runner"]["seccomp_second_filter"].startswith("absent")
    # The mounted relay runs too (network mode seatable): the proxy variables and a listening 127.0.0.1:3128.
    script = (f"import os, socket, {PROBE_PACKAGE} as p\n"
              "socket.create_connection(('127.0.0.1', 3128), timeout=5).close()\n"
              "print(p.GREETING, os.environ['HTTPS_PROXY'])\n")
    assert sandbox.run(901, script).status_code == 202
    result = receiver.result(901)
    assert result["output"] == "installed with pip --user http://127.0.0.1:3128\n", result
    assert result["success"] is True


def test_a_python_less_image_stops_the_sandbox_with_one_line(sandbox_user: SandboxUser, sandbox_factory: Any,
                                                              custom_image: str) -> None:
    """An image the entrypoint cannot run in is refused at start, not run after run."""
    tag = "localhost/seatable-test-no-python:1"
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="context-") as context:
        Path(context, "Containerfile").write_text(
            f"FROM {custom_image}\nUSER 0:0\nRUN rm -f /usr/bin/python3*\nUSER seatable\n")
        subprocess.run(["chmod", "-R", "a+rX", context], check=True)
        built = sandbox_user.run(["podman", "build", "-q", "--network", "none", "--label", f"{LABEL}=nopython",
                                  "-t", tag, context], timeout=600)
        assert built.returncode == 0, built.stderr[-2000:]
    try:
        with pytest.raises(AssertionError, match="sandbox exited at start") as failure:
            sandbox_factory(PYTHON_RUNNER_IMAGE=tag)
        assert f"seatable-sandbox serve: runner image {tag} cannot run the sandbox's entrypoint" in str(failure.value)
        assert "python3" in str(failure.value)
    finally:
        sandbox_user.run(["podman", "rmi", "--force", tag])
