"""Trusted runner entrypoint: limits first, then one job, then the user's script.

Runs inside the runner container as uid 1000 before any user code. Order matters:
rlimits and the seccomp filter are in force before the job is even read, so a pre-started
(warm) runner is exactly as constrained as a cold one. The job (script, stdin input and
environment, including the API token) arrives on stdin as one JSON line, so it never
appears in the container's configuration or on the host's disk.

The sandbox mounts this file and the egress relay read-only into every runner and starts it with the image's own
python3, so any image with a Python 3 is a runner image. Standard library plus pyseccomp (optional: an image without
it runs under Podman's profile alone, which carries the same denials); imports nothing from the services.
"""

from __future__ import annotations

import argparse
import base64
import errno
import importlib
import io
import json
import os
import pwd
import resource
import site
import sys
import tokenize
import traceback
import types

EGRESS_SOCKET = "/run/egress/proxy.sock"  # present when the sandbox gives this runner a way out
EGRESS_FORWARDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "egress_forward.py")
SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
CA_BUNDLE_PATH = "/tmp/.ca-bundle.pem"
SCRIPT_DIR = "/scripts"  # a link to SCRIPT_HOME, as upstream's scripts expect
SCRIPT_HOME = "/tmp/scripts"
SCRIPT_PATH = SCRIPT_DIR + "/index.py"
JOB_MAX_BYTES = 8 * 1024 * 1024
# Exit status for an allocation the address-space limit refused: the same code an
# out-of-memory kill gives, so both limit mechanisms read alike to SeaTable.
EXIT_OUT_OF_MEMORY = 137
EXIT_BAD_JOB = 125
# Last frame on the control stream (the container's stderr; user stderr is merged into
# stdout). It saves the host the wait for the runtime's teardown. A script can forge only
# its own exit status, which it controls anyway; kills leave no trailer and the host asks
# Podman instead.
TRAILER = b"\x00seatable-runner-exit "
# First frame on the control stream: limits, filter and pre-imports are done; waiting for the job.
# The warm pool counts a runner as ready from here on.
READY = b"\x00seatable-runner-ready\n"

# Denied with EPERM, not a kill, so user code sees an ordinary OSError.
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev",
    "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsmount", "fsconfig", "move_mount",
    "open_tree", "mount_setattr",
    "unshare", "setns",
    "keyctl", "add_key", "request_key",
    "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "personality",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "open_by_handle_at", "name_to_handle_at",
    "swapon", "swapoff", "reboot", "acct", "quotactl", "syslog", "vhangup",
    "lookup_dcookie", "fanotify_init", "iopl", "ioperm",
)
# clone flags that would create namespaces (the clone-based way around unshare).
CLONE_NAMESPACE_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="runner-entrypoint")
    parser.add_argument("--address-space", type=int, default=0, help="RLIMIT_AS bytes, 0 = unset")
    parser.add_argument("--nproc", type=int, default=0)
    parser.add_argument("--nofile", type=int, default=1024)
    parser.add_argument("--fsize", type=int, default=0)
    parser.add_argument("--cpu-seconds", type=int, default=0)
    parser.add_argument("--preimport", default="", help="comma-separated modules to import before the job")
    parser.add_argument("--no-seccomp", action="store_true", help="for diagnosis only")
    parser.add_argument("--probe", action="store_true", help="print what this image offers as JSON and exit")
    return parser.parse_args(argv)


def set_rlimits(args: argparse.Namespace) -> None:
    limits = [(resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, args.nofile)]
    if args.address_space:
        limits.append((resource.RLIMIT_AS, args.address_space))
    if args.nproc:
        limits.append((resource.RLIMIT_NPROC, args.nproc))
    if args.fsize:
        limits.append((resource.RLIMIT_FSIZE, args.fsize))
    if args.cpu_seconds:
        limits.append((resource.RLIMIT_CPU, args.cpu_seconds))
    for which, value in limits:
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))


def install_seccomp() -> bool:
    """Stack a deny-list filter on top of Podman's profile, for every thread; False where the image lacks pyseccomp."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError, RuntimeError):  # no binding, or no libseccomp behind it (upstream's alpine image)
        return False

    filt = seccomp.SyscallFilter(seccomp.ALLOW)
    filt.set_attr(seccomp.Attr.CTL_TSYNC, 1)
    for name in DENIED_SYSCALLS:
        try:
            filt.add_rule(seccomp.ERRNO(errno.EPERM), name)
        except (OSError, ValueError, RuntimeError):
            pass  # not a syscall on this architecture
    # glibc falls back from clone3 to clone only on ENOSYS; clone's flags can then be checked.
    filt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    for flag in _flag_bits(CLONE_NAMESPACE_FLAGS):
        filt.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    filt.load()
    return True


def _flag_bits(mask: int) -> list[int]:
    return [1 << bit for bit in range(mask.bit_length()) if mask & (1 << bit)]


def add_user_site() -> str:
    """The runner user's own packages (`pip install --user` in a custom image), ahead of the system's as in python3.

    -I leaves user site-packages out; this adds the directory of the passwd entry's home (read-only image content,
    never HOME, which is the writable /tmp), with its .pth files, before any script runs. "" when there is none.
    """
    try:
        home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return ""
    path = os.path.join(home, ".local", "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
    if not home.startswith("/") or home == "/tmp" or not os.path.isdir(path):
        return ""
    before = list(sys.path)
    site.addsitedir(path)
    added = [entry for entry in sys.path if entry not in before]
    system = set(site.getsitepackages())
    first = next((index for index, entry in enumerate(before) if entry in system), len(before))
    sys.path[:] = before[:first] + added + before[first:]
    return path


def probe_report(second_filter: bool, user_site: str) -> str:
    """What the sandbox reports about a runner image (--probe)."""
    return json.dumps({"python": sys.version.split()[0], "executable": sys.executable,
                       "second_filter": second_filter, "user_site": user_site})


def preimport(modules: str) -> None:
    for name in filter(None, (m.strip() for m in modules.split(","))):
        try:
            importlib.import_module(name)
        except Exception as exc:  # a missing optional module must not stop the runner
            print(f"runner: preimport of {name} failed: {exc}", file=sys.stderr)


def read_job() -> dict[str, object]:
    line = sys.stdin.buffer.readline(JOB_MAX_BYTES + 1)
    if not line.endswith(b"\n") or len(line) > JOB_MAX_BYTES:
        raise ValueError("job missing, truncated or too large")
    job = json.loads(line)
    if not isinstance(job, dict) or not isinstance(job.get("script_b64"), str):
        raise ValueError("job has no script")
    # The script's bytes as SeaTable stored them (base64: JSON cannot carry arbitrary bytes).
    job["script"] = base64.b64decode(job["script_b64"], validate=True)
    env = job.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("job env must map strings to strings")
    if not isinstance(job.get("input", ""), str):
        raise ValueError("job input must be a string")
    if not isinstance(job.get("ca_bundle", ""), str):
        raise ValueError("job ca_bundle must be a string")
    return job


def start_egress() -> dict[str, str]:
    """Relay 127.0.0.1:3128 to the sandbox's egress socket; the proxy variables for the script.

    The relay enforces nothing (the host-side proxy does), so a script that ignores the
    variables or kills the relay only loses its own way out.
    """
    if not os.path.exists(EGRESS_SOCKET):
        return {}
    import importlib.util

    spec = importlib.util.spec_from_file_location("egress_forward", EGRESS_FORWARDER)
    if spec is None or spec.loader is None:
        return {}
    forward = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(forward)
    forward.start(EGRESS_SOCKET)
    env: dict[str, str] = forward.proxy_env()
    return env


def trust_store(extra_pem: str) -> dict[str, str]:
    """The system CAs plus the admin's, for requests (REQUESTS_CA_BUNDLE) and ssl (SSL_CERT_FILE)."""
    if not extra_pem:
        return {}
    with open(SYSTEM_CA_FILE, encoding="ascii") as system, open(CA_BUNDLE_PATH, "w", encoding="ascii") as bundle:
        bundle.write(system.read().rstrip("\n") + "\n" + extra_pem)
    return {"REQUESTS_CA_BUNDLE": CA_BUNDLE_PATH, "SSL_CERT_FILE": CA_BUNDLE_PATH}


def stdin_from(text: str) -> None:
    """Give the script its input as fd 0, from memory (never a file on disk)."""
    fd = os.memfd_create("input", 0)
    os.write(fd, text.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    os.dup2(fd, 0)
    os.close(fd)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")


def prepare_environment(env: dict[str, str], base: dict[str, str] | None = None) -> None:
    os.environ.clear()
    os.environ.update({
        "HOME": "/tmp",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "is_cloud": "1",
        **(base or {}),
    })
    os.environ.update(env)
    if "TZ" in env:
        import time

        time.tzset()
    # seatable_api.context reads stdin and the environment at import: a preimported copy
    # saw neither, so the script must get a fresh one (the package re-exports its instance).
    package = sys.modules.get("seatable_api")
    if "seatable_api.context" in sys.modules:
        del sys.modules["seatable_api.context"]
        fresh = importlib.import_module("seatable_api.context")
        if package is not None:
            package.context = fresh.context  # type: ignore[attr-defined]


def compile_script(source: bytes) -> types.CodeType:
    """Compile the file's bytes as `python index.py` reads them: a BOM or coding declaration (PEP 263), else UTF-8.

    compile() on bytes honours both, but lets invalid UTF-8 through outside string literals where the interpreter's
    file reader refuses it; that one case raises the file reader's own SyntaxError here. dont_inherit: the script
    must not get this module's `from __future__` flags.
    """
    try:
        encoding, _lines = tokenize.detect_encoding(io.BytesIO(source).readline)
    except SyntaxError:
        encoding = ""  # a bad declaration: compile() below says so in Python's own words
    if encoding == "utf-8":
        try:
            source.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = source.count(b"\n", 0, exc.start) + 1
            raise SyntaxError(f"Non-UTF-8 code starting with '\\x{source[exc.start]:02x}' in file {SCRIPT_PATH} on "
                              f"line {line}, but no encoding declared; see https://peps.python.org/pep-0263/ "
                              "for details") from None
    return compile(source, SCRIPT_PATH, "exec", dont_inherit=True)


def run_script(source: bytes) -> int:
    os.makedirs(SCRIPT_HOME, mode=0o700, exist_ok=True)
    with open(SCRIPT_PATH, "wb") as handle:
        handle.write(source)
    os.chdir(SCRIPT_DIR)
    main = types.ModuleType("__main__")
    main.__file__ = SCRIPT_PATH
    main.__builtins__ = __builtins__  # type: ignore[attr-defined]
    sys.modules["__main__"] = main
    sys.argv = [SCRIPT_PATH]
    sys.path[0:0] = [SCRIPT_DIR]
    try:
        code = compile_script(source)
        exec(code, main.__dict__)  # noqa: S102 - running the user's script is the point
    except SystemExit:
        raise
    except BaseException as exc:
        frames = exc.__traceback__
        while frames is not None and frames.tb_frame.f_globals is globals():  # hide the entrypoint's frames
            frames = frames.tb_next
        sys.stdout.flush()
        traceback.print_exception(type(exc), exc, frames)
        sys.stderr.flush()
        return EXIT_OUT_OF_MEMORY if isinstance(exc, MemoryError) else 1
    return 0


def exit_status(exc: SystemExit) -> int:
    """What the interpreter would exit with for this SystemExit."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def finish(control: int, status: int) -> None:
    """Interpreter shutdown as Python does it, then the trailer, then exit."""
    import atexit
    import threading

    try:
        threading._shutdown()  # type: ignore[attr-defined]  # join non-daemon threads
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        os.write(control, TRAILER + str(status).encode() + b"\n")
    except OSError:
        pass
    os._exit(status)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    set_rlimits(args)
    user_site = add_user_site()
    second_filter = False if args.no_seccomp else install_seccomp()
    if args.probe:
        print(probe_report(second_filter, user_site), flush=True)
        return
    preimport(args.preimport)
    try:
        os.write(2, READY)
    except OSError:
        pass
    # Output is one ordered stream: stderr goes where stdout goes, unbuffered.
    control = os.dup(2)
    os.dup2(1, 2)
    sys.stdout.reconfigure(write_through=True, line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(write_through=True, line_buffering=True)  # type: ignore[union-attr]
    try:
        job = read_job()
    except (ValueError, OSError) as exc:
        print(f"runner: bad job: {exc}", file=sys.stderr)
        finish(control, EXIT_BAD_JOB)
        return
    env = job.get("env", {})
    assert isinstance(env, dict)
    stdin_from(str(job.get("input", "")))
    try:
        base = {**start_egress(), **trust_store(str(job.get("ca_bundle", "")))}
    except (OSError, ValueError) as exc:
        print(f"runner: network set-up failed: {exc}", file=sys.stderr)
        base = {}
    prepare_environment(env, base)
    try:
        script = job["script"]
        assert isinstance(script, bytes)
        status = run_script(script)
    except SystemExit as exc:
        status = exit_status(exc)
    finish(control, status)


if __name__ == "__main__":
    main(sys.argv[1:])
