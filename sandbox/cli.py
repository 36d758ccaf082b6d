"""seatable-sandbox: set up the rootless host, build the runner image, serve the sandbox API."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from sandbox.errors import SetupError


def cmd_host_setup(args: argparse.Namespace) -> int:
    from sandbox.host import setup_host

    if args.stack_user:
        from sandbox.stack_user import check_stack_user

        check_stack_user(args.stack_user, args.user)  # before anything on the host changes
    report = setup_host(args.user, cgroups_only=args.cgroups_only)
    if report is None:
        return 0
    if args.stack_user:
        from sandbox.stack_user import setup_stack_user

        stack = setup_stack_user(args.stack_user, args.user)
        if not args.quiet and not args.json:
            print(f"stack user        {stack.name} (its own rootless Podman for compose.yaml)")
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    elif not args.quiet:
        print(f"sandbox user      {report.user}")
        print(f"podman socket     {report.socket}")
        print(f"OCI runtime       {report.runtime}")
        print(f"storage driver    {report.storage_driver}")
        controllers = ", ".join(report.cgroup_controllers) or "none"
        print(f"cgroups           {report.cgroup_version} (controllers: {controllers})")
        print(f"run limits        {report.mechanism} ("
              + ", ".join(f"{k}: {v}" for k, v in report.limits.items()) + ")")
        print(f"runner identities {report.concurrent_runs} concurrent runs, each with a host uid of its own")
        print(f"services          oom_score_adj {report.services_oom_score_adj}")
        print(f"seccomp           {'yes' if report.seccomp else 'NO'}")
        for note in report.notes:
            print(f"note              {note}")
    return 0


def cmd_build_runner(args: argparse.Namespace) -> int:
    from sandbox.host import lookup_user
    from sandbox.image import Recipe, RunnerImageBuilder

    requirements = args.requirements
    if requirements is not None and not _is_lock(requirements):
        requirements = _lock_into_cache(requirements, args.cache_dir, tuple(args.sdist_only), args.quiet)
    recipe = Recipe.packaged(requirements=requirements, extra_packages=tuple(args.extra_package),
                             sdist_only=tuple(args.sdist_only))
    builder = RunnerImageBuilder(lookup_user(args.user), recipe, cache_dir=args.cache_dir, quiet=args.quiet)
    tag = builder.build(force=args.force, prune=args.prune)
    print(tag)
    return 0


def _is_lock(path: Path) -> bool:
    from sandbox.runner_lock import is_locked

    try:
        return is_locked(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise SetupError(f"cannot read {path}: {exc}") from None


def _lock_into_cache(requirements: Path, cache_dir: Path, sdist_only: tuple[str, ...], quiet: bool) -> Path:
    """A plain requirements list is locked first (uv, for the runner's Python); the lock is kept in the cache."""
    import hashlib

    from sandbox.image import packaged_sdist_only
    from sandbox.runner_lock import RUNNER_PYTHON, lock

    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    target = cache_dir / "locks" / f"{requirements.stem}-{digest}.lock"
    target.parent.mkdir(parents=True, exist_ok=True)
    lock(requirements, target, packaged_sdist_only(sdist_only), cache_dir)
    if not quiet:
        print(f"locked {requirements} for Python {RUNNER_PYTHON} into {target} (pass that file to keep these pins)")
    return target


def cmd_lock_runner(args: argparse.Namespace) -> int:
    from sandbox.image import packaged_sdist_only
    from sandbox.runner_lock import lock

    output = args.output or args.requirements.with_suffix(".lock")
    lock(args.requirements, output, packaged_sdist_only(tuple(args.sdist_only)), upgrade=args.upgrade)
    print(output)
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    from sandbox.image import default_image

    print(default_image())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from sandbox.server import serve

    serve()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sandbox.host import configured_user
    from sandbox.image import DEFAULT_CACHE

    parser = argparse.ArgumentParser(prog="seatable-sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {}

    p = sub.add_parser("host-setup", help="create the sandbox user and start its rootless Podman API")
    p.add_argument("--user", default=configured_user())
    p.add_argument("--json", action="store_true", help="print the capability report as JSON")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--cgroups-only", action="store_true",
                   help="only (re)create the user's delegated runner cgroups (cgroup v1; at every boot)")
    p.add_argument("--stack-user", metavar="NAME",
                   help="also prepare this user's rootless Podman for the compose stack (MariaDB, scheduler, "
                        "dispatcher), which must not live in the sandbox user's (e.g. seatable-stack)")
    commands["host-setup"] = cmd_host_setup

    p = sub.add_parser("build-runner", help="build the runner image offline and import it")
    p.add_argument("--user", default=configured_user())
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--requirements", type=Path, help="replace the packaged runner packages: a lock (pins and "
                   "hashes, from lock-runner) is used as it is; a plain list is locked first")
    p.add_argument("--extra-package", action="append", default=[], help="another Debian package")
    p.add_argument("--sdist-only", action="append", default=[], metavar="NAME",
                   help="another Python package that may be built from source (pure Python, no wheel published)")
    p.add_argument("--force", action="store_true", help="rebuild even when the image exists")
    p.add_argument("--prune", action="store_true", help="remove images and tarballs of other recipes")
    p.add_argument("--quiet", action="store_true")
    commands["build-runner"] = cmd_build_runner

    p = sub.add_parser("lock-runner", help="pin runner requirements with hashes for the runner's Python (uv)")
    p.add_argument("requirements", type=Path, help="a requirements list, e.g. runner-rootfs/requirements.in")
    p.add_argument("-o", "--output", type=Path, help="the lock file (default: the list's name with .lock)")
    p.add_argument("--upgrade", action="store_true", help="newest versions, not the pins already in the output")
    p.add_argument("--sdist-only", action="append", default=[], metavar="NAME",
                   help="another package that may be built from source")
    commands["lock-runner"] = cmd_lock_runner

    sub.add_parser("image", help="print the runner image tag this installation uses")
    commands["image"] = cmd_image

    sub.add_parser("serve", help="serve the sandbox API under gunicorn (as the sandbox user)")
    commands["serve"] = cmd_serve

    from sandbox import local

    p = sub.add_parser("run-local", help="run one script through a real runner, as SeaTable would")
    local.add_arguments(p)
    commands["run-local"] = local.command

    from sandbox.systemd import add_parser as add_systemd_parser

    add_systemd_parser(sub, commands)

    parser.set_defaults(commands=commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.commands[args.command](args)
    except SetupError as exc:
        print(f"seatable-sandbox {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
