"""One runner recipe: Containerfile.runner-registry, built offline, gives the image build-runner gives.

No registry here: its BASE_IMAGE is a local Debian trixie minbase with the runner's Debian packages (what
debian:trixie-slim plus its apt step would be), its pip reads build-runner's hash-checked wheelhouse as /wheels,
and the build has no network at all. The two images must hold the same Python packages (names and versions), the
same runner user, the same image files (runner-rootfs/finish_tree.py), no setuid file, and run scripts through
the sandbox's mounted entrypoint and egress relay.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from sandbox.host import SandboxUser
from sandbox.image import SUITE, Recipe, RunnerImageBuilder
from tests.deployment.images import LABEL, REPO, Podman, build_base, build_context, digest, tree_digest
from tests.deployment.stack import prune
from tests.support.podman import CallbackReceiver, SandboxProcess

FACTS = """\
import importlib.metadata, json, os, pwd, subprocess, sys
packages = sorted({(d.metadata['Name'].lower().replace('_', '-'), d.version)
                   for d in importlib.metadata.distributions(path=['/opt/runner/site-packages'])})
user = pwd.getpwuid(1000)
files = {path: open(path).read() for path in ('/etc/resolv.conf', '/etc/hosts',
                                              '/usr/lib/python3/dist-packages/runner.pth')}
setid = subprocess.run(['find', '/', '-xdev', '-perm', '/6000', '-type', 'f'], capture_output=True, text=True)
print(json.dumps({'python': sys.version.split()[0], 'packages': packages, 'user': [user.pw_name, user.pw_uid,
                  user.pw_gid, user.pw_dir], 'files': files, 'scripts': os.readlink('/scripts'),
                  'mount_point': os.path.isdir('/opt/seatable-runner'), 'setid': setid.stdout.split(),
                  'uid': os.getuid()}))
"""


@pytest.fixture(scope="module")
def cli(compose_host: Podman) -> Podman:
    """The sandbox user's Podman, as the deployment tests build images with it (lane: compose)."""
    return compose_host


@pytest.fixture(scope="module")
def registry_image(cli: Podman) -> str:
    podman = cli
    recipe = Recipe.packaged()
    base = build_base(podman, suite=SUITE, packages=(*recipe.debian_packages, "python3-venv"),
                      name="localhost/seatable-deploy-runner-base")
    wheels = RunnerImageBuilder(podman.user, recipe).wheelhouse()
    subprocess.run(["chmod", "-R", "a+rX", str(wheels.parent), str(wheels)], check=True)
    context = build_context(podman.user)
    source = tree_digest(REPO, ("runner-rootfs", "containers"))
    tag = f"localhost/seatable-deploy-runner-registry:{digest(base, source)}"
    if not podman.exists(tag):
        containerfile = context / "containers" / "Containerfile.runner-registry"
        podman.run("build", "-q", "--network", "none", "-f", str(containerfile),
                   "--build-arg", f"BASE_IMAGE={base}", "--build-arg", "PIP_ARGS=--no-index --find-links /wheels",
                   "-v", f"{wheels}:/wheels:ro", "--label", f"{LABEL}=runner-registry", "-t", tag, str(context),
                   timeout=1800)
        prune(podman, tag, "runner-registry")
    return tag


def facts(podman: Podman, image: str) -> dict[str, Any]:
    out = podman.run("run", "--rm", "--network", "none", "--no-hosts", "--read-only", "--label", f"{LABEL}=probe",
                     "--entrypoint", "python3", image, "-I", "-c", FACTS).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def test_registry_variant_has_what_build_runner_gives(cli: Podman, registry_image: str, runner_image: str) -> None:
    podman = cli
    ours, theirs = facts(podman, runner_image), facts(podman, registry_image)
    assert ours["python"].startswith("3.13")
    assert len(ours["packages"]) > 40 and ("pyseccomp", "0.1.2") in [tuple(p) for p in ours["packages"]]
    assert theirs == ours
    config = {image: podman.run("image", "inspect", "--format", "{{json .Config}}", image).stdout
              for image in (runner_image, registry_image)}
    for image, raw in config.items():
        data = json.loads(raw)
        assert data["User"] == "1000:1000", image
        assert data["Entrypoint"] == ["python3", "-I", "/opt/seatable-runner/entrypoint.py"], image
        assert "LANG=C.UTF-8" in data["Env"], image


def test_registry_variant_runs_scripts_with_the_mounted_entrypoint_and_relay(
        sandbox_factory: Any, receiver: CallbackReceiver, registry_image: str, sandbox_user: SandboxUser) -> None:
    # The seatable mode: its relay (mounted with the entrypoint) is what the script connects to.
    sandbox: SandboxProcess = sandbox_factory(PYTHON_RUNNER_IMAGE=registry_image, PYTHON_RUNNER_NETWORK="seatable")
    assert sandbox.health()["runner"]["seccomp_second_filter"] == "present"
    script = ("import os, socket, pandas, seatable_api\n"
              "socket.create_connection(('127.0.0.1', 3128), timeout=5).close()\n"
              "status = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
              "print(os.environ['HTTPS_PROXY'], status['Seccomp_filters'].strip(), __file__)\n")
    assert sandbox.run(951, script).status_code == 202
    result = receiver.result(951, timeout=120)
    assert result["output"] == "http://127.0.0.1:3128 2 /scripts/index.py\n", result
