"""run-local: one script through a real runner, without SeaTable or the scheduler.

For script authors on a pipeline host: the same image, entrypoint, limits and outcome texts
as a real run, driven straight through the sandbox user's Podman socket (as root or as that
user). The context and environment are what SeaTable would pass.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sandbox.config import SandboxConfig
from sandbox.driver import ContainerDriver, Job, RunResult
from sandbox.egress import EgressPolicy, EgressProxy
from sandbox.errors import SetupError
from sandbox.host import configured_user, lookup_user
from sandbox.image import default_image
from sandbox.isolation import probe
from sandbox.limits import RunnerLimits
from sandbox.netguard import NetGuardError
from sandbox.network import start_open_network
from sandbox.podman_api import PodmanAPI
from sandbox.seccomp_profile import write_profile


@dataclass(frozen=True)
class LocalRun:
    path: Path
    context: object = None
    env: tuple[tuple[str, str], ...] = ()
    user: str = ""


def run_local(request: LocalRun) -> RunResult:
    try:
        script = request.path.read_bytes()  # decoded in the runner as Python decodes a file
    except OSError as exc:
        raise SetupError(f"cannot read {request.path}: {exc}") from None
    user = lookup_user(request.user or configured_user())
    # The sandbox's own settings where given (limits, image), without requiring its tokens; the Podman API
    # is the sandbox user's unless PYTHON_SANDBOX_PODMAN_URL says otherwise, whoever runs this.
    # SeaTable's secret may be in a scheduler host's environment; run-local neither uses nor warns about it.
    config = SandboxConfig.from_env(fallbacks={"PYTHON_SANDBOX_AUTH_TOKEN": "-",
                                               "PYTHON_SANDBOX_PODMAN_URL": user.socket_url},
                                    warn_unused_secret=False)
    api = PodmanAPI(config.podman_url)
    if not api.ping():
        raise SetupError(f"no Podman API at {api.socket_path}; run 'seatable-sandbox host-setup' as root")
    image = config.image or default_image()
    if not api.image_exists(image):
        raise SetupError(f"runner image {image} is missing; run 'seatable-sandbox build-runner' as root")
    with tempfile.TemporaryDirectory(prefix="run-local-") as state:
        os.chmod(state, 0o755)  # noqa: S103 - the Podman service (the sandbox user) reads the profile
        egress = None
        if config.network == "seatable":
            egress = EgressProxy(Path(state) / "egress")
            os.chmod(egress.base_dir, 0o755)  # noqa: S103 - the sandbox user's Podman bind-mounts from it
        node = f"run-local-{os.getpid()}"
        isolation = probe(api.client.info(), owner=node, state_dir=Path(state))
        try:
            network = start_open_network(config) if config.network == "open" else None
        except NetGuardError as exc:
            raise SetupError(str(exc)) from None
        driver = ContainerDriver(
            api=api, image=image, node=node, output_limit=config.output_limit,
            limits=RunnerLimits(memory=config.memory, pids=config.pids, cpus=config.cpus,
                                timeout=config.timeout, tmpfs_size=config.tmpfs_size),
            enforcement=isolation.enforcement, seccomp_profile=str(write_profile(Path(state))),
            egress=egress, identities=isolation.identities, cgroups=isolation.cgroups, network=network,
            options=config.runner_options,
        )
        env = {**config.runner_options.env, "is_cloud": "1", "TZ": config.time_zone, **dict(request.env)}
        context = "" if request.context is None else json.dumps(request.context)
        containers: list[str] = []
        try:
            policy = None if config.network == "none" else EgressPolicy.for_run(
                config.network, config.egress_allow, env.get("dtable_web_url"))
            job = Job(0, script, context, env, egress=policy, ca_bundle=config.ca_bundle)
            return driver.run(job, config.timeout, containers.append, lambda _t: None)
        finally:
            for container in containers:
                driver.cleanup(container)
            if isolation.cgroups is not None:
                isolation.cgroups.stop()
            api.close()
            if egress is not None:
                egress.shutdown()
            if network is not None:
                network.stop()


def print_result(result: RunResult) -> int:
    sys.stdout.write(result.output)
    if result.output and not result.output.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()  # the output before the outcome line, also when both go to one pipe
    state = "succeeded" if result.success else "failed"
    print(f"--- {state}: {result.outcome}, return code {result.return_code}, {result.spend_time:.2f} s",
          file=sys.stderr)
    return 0 if result.success else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="the Python script to run")
    parser.add_argument("--context", type=json.loads, help='JSON as SeaTable passes it, e.g. \'{"table": "T"}\'')
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the script, e.g. dtable_web_url=... api_token=...")
    parser.add_argument("--user", default=configured_user(), help="the sandbox user whose Podman runs the script")


def command(args: argparse.Namespace, _config: object = None) -> int:
    """CLI handler: run, print the output and one outcome line; exit 0 only on success."""
    env = []
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            print(f"run-local: --env needs NAME=VALUE, not {item!r}", file=sys.stderr)
            return 2
        env.append((name, value))
    try:
        result = run_local(LocalRun(args.file, args.context, tuple(env), args.user))
    except (SetupError, ValueError) as exc:
        print(f"run-local: {exc}", file=sys.stderr)
        return 2
    return print_result(result)
