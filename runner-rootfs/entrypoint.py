"""Trusted runner entrypoint: limits first, then one job, then the user's script in a child.

Runs inside the runner container as uid 1000 before any user code. Order matters:
rlimits and the seccomp filter are in force before the job is even read, so a pre-started
(warm) runner is exactly as constrained as a cold one. The job (script, stdin input and
environment, including the API token) arrives on stdin as one JSON line, so it never
appears in the container's configuration or on the host's disk.

The outcome is reported by this process, pid 1 of the container, never by the script: after
the pre-imports it makes itself non-dumpable (so the script cannot open /proc/1/fd/* or
/proc/1/mem), forks, and the child closes the control stream (the container's stderr) before
it reads the job. Pid 1 then only reaps, and writes the child's wait status and CPU time on
the control stream. Its own pid namespace cannot SIGKILL or stop it, and it keeps no handler
for any other signal, so nothing the script can do changes what is reported.

The sandbox mounts this file and the egress relay read-only into every runner and starts it with the image's own
python3, so any image with a Python 3 is a runner image. Standard library plus pyseccomp (optional: an image without
it runs under Podman's profile alone, which carries the same denials); imports nothing from the services.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import importlib
import io
import json
import os
import pwd
import resource
import signal
import site
import sys
import types
import warnings
from collections.abc import Iterator
from typing import NoReturn

EGRESS_SOCKET = "/run/egress/proxy.sock"  # present when the sandbox gives this runner a way out
EGRESS_FORWARDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "egress_forward.py")
SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
CA_BUNDLE_PATH = "/tmp/.ca-bundle.pem"
IMAGE_USER_UID = 1000  # the runner image's own user, whose `pip install --user` packages runs import
SCRIPT_DIR = "/scripts"  # a link to SCRIPT_HOME, as upstream's scripts expect
SCRIPT_HOME = "/tmp/scripts"
SCRIPT_PATH = SCRIPT_DIR + "/index.py"
JOB_MAX_BYTES = 8 * 1024 * 1024
# Exit status for an allocation the address-space limit refused: the code an out-of-memory
# kill gives, so both limit mechanisms read alike to SeaTable.
EXIT_OUT_OF_MEMORY = 137
EXIT_BAD_JOB = 125
# The one record pid 1 writes on the control stream (the container's stderr) when the script's
# process has ended: this prefix, then JSON {"status": raw wait status, "cpu_s": its own CPU
# seconds, "cpu_limit_s": [soft, hard] RLIMIT_CPU at its death, "maxrss_kib": ...}, then "\n".
EXIT_RECORD = b"\x00seatable-runner-exit "
# First line on the control stream: limits, filter and pre-imports are done, the script's process
# waits for the job. The warm pool counts a runner as ready from here on.
READY = b"\x00seatable-runner-ready\n"
PR_SET_DUMPABLE = 4
# The libraries pyseccomp looks up, by the sonames glibc-based images (Debian, Ubuntu) give them.
KNOWN_SONAMES = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}

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
    # inotify instances and watches are charged to the owner of the user namespace, the sandbox
    # user, whatever uid a runner has: one run could take every instance the service has.
    "inotify_init", "inotify_init1",
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


# Options and their defaults. Parsed by hand, not with argparse: its import (re, gettext, shutil) costs
# every run ~15 ms of CPU, and the sandbox is the only caller.
INT_OPTIONS = {
    "address_space": 0,  # RLIMIT_AS bytes, 0 = unset
    "nproc": 0,
    "nofile": 1024,
    "fsize": 0,
    "cpu_seconds": 0,
    "sigpending": -1,  # RLIMIT_SIGPENDING, -1 = unchanged
    "msgqueue": -1,  # RLIMIT_MSGQUEUE bytes, -1 = unchanged
    "running_oom_score": 0,  # oom_score_adj from the job on (0 = unchanged): running runs before idle ones
}
TEXT_OPTIONS = {"preimport": ""}  # comma-separated modules to import before the job
FLAGS = ("no_seccomp", "probe")  # --no-seccomp for diagnosis only; --probe prints what this image offers


def parse_args(argv: list[str]) -> types.SimpleNamespace:
    """`--name value` and `--flag` options; anything else ends the runner with a usage line (exit 2)."""
    values: dict[str, object] = {**INT_OPTIONS, **TEXT_OPTIONS, **dict.fromkeys(FLAGS, False)}
    args = iter(argv)
    for arg in args:
        name = arg[2:].replace("-", "_") if arg.startswith("--") else ""
        if name in FLAGS:
            values[name] = True
            continue
        if name not in INT_OPTIONS and name not in TEXT_OPTIONS:
            usage(f"unrecognized argument: {arg}")
        value = next(args, None)
        if value is None:
            usage(f"{arg} expects a value")
        if name in INT_OPTIONS:
            try:
                values[name] = int(value)
            except ValueError:
                usage(f"{arg}: not an integer: {value!r}")
        else:
            values[name] = value
    return types.SimpleNamespace(**values)


def usage(problem: str) -> NoReturn:
    options = " ".join([f"[--{n.replace('_', '-')} N]" for n in INT_OPTIONS]
                       + [f"[--{n.replace('_', '-')} TEXT]" for n in TEXT_OPTIONS]
                       + [f"[--{n.replace('_', '-')}]" for n in FLAGS])
    print(f"usage: runner-entrypoint {options}\nrunner-entrypoint: error: {problem}", file=sys.stderr)
    sys.exit(2)


def set_rlimits(args: types.SimpleNamespace) -> None:
    limits = [(resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, args.nofile)]
    if args.address_space:
        limits.append((resource.RLIMIT_AS, args.address_space))
    if args.nproc:
        limits.append((resource.RLIMIT_NPROC, args.nproc))
    if args.fsize:
        limits.append((resource.RLIMIT_FSIZE, args.fsize))
    if args.sigpending >= 0:
        limits.append((resource.RLIMIT_SIGPENDING, args.sigpending))
    if args.msgqueue >= 0:
        limits.append((resource.RLIMIT_MSGQUEUE, args.msgqueue))
    for which, value in limits:
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))
    if args.cpu_seconds:
        # Soft below hard: the kernel sends SIGXCPU at the limit (a kill that says why) and
        # SIGKILL only a second later, for a script that ignores SIGXCPU.
        resource.setrlimit(resource.RLIMIT_CPU, (args.cpu_seconds, args.cpu_seconds + 1))


def install_seccomp() -> bool:
    """Stack a deny-list filter on top of Podman's profile, for every thread; False where the image lacks pyseccomp."""
    try:
        with known_libraries():
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


@contextlib.contextmanager
def known_libraries() -> Iterator[None]:
    """While pyseccomp is imported, ctypes.util is a stand-in that names libc and libseccomp by their sonames.

    The real ctypes.util imports subprocess and shutil, and its find_library runs `ldconfig -p` (where that
    fails, gcc and ld) once per library: together about a fifth of a warm run's CPU. The dynamic loader finds
    the sonames itself; in an image where one does not load (musl, another soname) the real module answers.
    Afterwards the script imports the real module as usual.
    """
    import ctypes

    def find_library(name: str) -> str | None:
        soname = KNOWN_SONAMES.get(name)
        if soname is not None:
            try:
                ctypes.CDLL(soname)
                return soname
            except OSError:
                pass
        sys.modules.pop("ctypes.util", None)
        import ctypes.util as real

        found: str | None = real.find_library(name)
        return found

    stand_in = types.ModuleType("ctypes.util")
    stand_in.find_library = find_library  # type: ignore[attr-defined]
    had = sys.modules.get("ctypes.util")
    sys.modules["ctypes.util"] = stand_in
    ctypes.util = stand_in  # `import ctypes.util` then reads the attribute
    try:
        yield
    finally:
        if sys.modules.get("ctypes.util") is stand_in:
            del sys.modules["ctypes.util"]
        if had is not None:
            sys.modules["ctypes.util"] = had
        if getattr(ctypes, "util", None) is stand_in:
            if had is not None:
                ctypes.util = had
            else:
                del ctypes.util


def _flag_bits(mask: int) -> list[int]:
    return [1 << bit for bit in range(mask.bit_length()) if mask & (1 << bit)]


def add_user_site() -> str:
    """The runner user's own packages (`pip install --user` in a custom image), ahead of the system's as in python3.

    -I leaves user site-packages out; this adds the directory of the passwd entry's home (read-only image content,
    never HOME, which is the writable /tmp), with its .pth files, before any script runs. "" when there is none.
    """
    # A run's own uid has no home of its own (Podman may add a passwd line for it, with home "/"): the packages
    # are those of the image's user (upstream's seatable, 1000).
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    path = ""
    for uid in (os.getuid(), IMAGE_USER_UID):
        try:
            home = pwd.getpwuid(uid).pw_dir
        except KeyError:
            continue
        candidate = os.path.join(home, ".local", "lib", version, "site-packages")
        if home.startswith("/") and home not in ("/", "/tmp") and os.path.isdir(candidate):
            path = candidate
            break
    if not path:
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


def mark_running(oom_score_adj: int) -> None:
    """From here on this runner holds a job: under host memory pressure it goes before idle runners."""
    if oom_score_adj:
        with open("/proc/self/oom_score_adj", "w", encoding="ascii") as handle:
            handle.write(str(oom_score_adj))


def preimport(modules: str) -> None:
    for name in filter(None, (m.strip() for m in modules.split(","))):
        try:
            importlib.import_module(name)
        except Exception as exc:  # a missing optional module must not stop the runner
            print(f"runner: preimport of {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)


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
    if source.startswith(b"\xef\xbb\xbf") or b"coding" in b"\n".join(source.split(b"\n", 2)[:2]):
        import tokenize  # only for a BOM or a declaration: its import costs every other run CPU

        try:
            encoding, _lines = tokenize.detect_encoding(io.BytesIO(source).readline)
        except SyntaxError:
            encoding = ""  # a bad declaration: compile() below says so in Python's own words
    else:
        encoding = "utf-8"
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
        import traceback

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


def finish(status: int) -> None:
    """Interpreter shutdown as Python does it, then exit (the script's process)."""
    import atexit
    import threading

    try:
        threading._shutdown()  # type: ignore[attr-defined]  # join non-daemon threads
        atexit._run_exitfuncs()
    except BaseException:
        import traceback

        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def set_dumpable(dumpable: bool) -> None:
    """prctl(PR_SET_DUMPABLE): a non-dumpable process's /proc files are closed to its own uid."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, int(dumpable), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")


def run_job(running_oom_score: int) -> None:
    """The script's process: drop the control stream, read the job, run the script, exit."""
    # Output is one ordered stream: stderr goes where stdout goes. This also closes this
    # process's only descriptor of the control stream, before anything of the job is read.
    os.dup2(1, 2)
    set_dumpable(True)
    sys.stdout.reconfigure(write_through=True, line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(write_through=True, line_buffering=True)  # type: ignore[union-attr]
    try:
        job = read_job()
    except (ValueError, OSError) as exc:
        print(f"runner: bad job: {exc}", file=sys.stderr)
        finish(EXIT_BAD_JOB)
        return
    mark_running(running_oom_score)
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
    finish(status)


def reap(child: int) -> dict[str, object]:
    """Reap every process that ends here until `child` does; what the kernel says of `child`."""
    while True:
        info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        if info is None:
            continue
        if info.si_pid != child:
            os.waitpid(info.si_pid, 0)  # an orphan of the script, reparented to pid 1
            continue
        record: dict[str, object] = {}
        try:  # while it is a zombie: its own CPU time and the CPU limit it died under
            fields = open(f"/proc/{child}/stat", "rb").read().rsplit(b")", 1)[1].split()
            record["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            record["cpu_limit_s"] = list(resource.prlimit(child, resource.RLIMIT_CPU))
        except (OSError, ValueError, IndexError):
            pass
        _pid, status, usage = os.wait4(child, 0)
        record.setdefault("cpu_s", usage.ru_utime + usage.ru_stime)
        record.update(status=status, maxrss_kib=usage.ru_maxrss)
        return record


def fork_when_allowed() -> int:
    """os.fork(), waiting while the process limit is reached (RLIMIT_NPROC counts other runners' too).

    A warm runner then only becomes ready later; a run's own time limit is the host's timer.
    """
    import time

    delay = 0.01
    while True:
        try:
            return os.fork()
        except BlockingIOError:
            time.sleep(delay)
            delay = min(0.5, delay * 2)


def supervise(running_oom_score: int) -> None:
    """Pid 1: fork the script's process, wait for it, report how it ended. Never returns."""
    set_dumpable(False)
    # The namespace's init ignores signals it has no handler for: drop the one Python installs,
    # before the fork, so the script's process never sees a moment when pid 1 has it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fork with pre-import threads alive is intended here
        child = fork_when_allowed()
    if child == 0:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            run_job(running_oom_score)
        except BaseException:
            import traceback

            traceback.print_exc()
        os._exit(1)
    try:
        os.write(2, READY)
    except OSError:
        pass
    try:
        record = reap(child)
    except BaseException as exc:  # reported as no status: the host then asks Podman
        record = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    status = record.get("status")
    code = 125
    if isinstance(status, int):
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    try:
        os.write(2, EXIT_RECORD + json.dumps(record).encode() + b"\n")
    except OSError:
        pass
    os._exit(code)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    set_rlimits(args)
    user_site = add_user_site()
    second_filter = False if args.no_seccomp else install_seccomp()
    if args.probe:
        print(probe_report(second_filter, user_site), flush=True)
        return
    preimport(args.preimport)
    supervise(args.running_oom_score)


if __name__ == "__main__":
    main(sys.argv[1:])
