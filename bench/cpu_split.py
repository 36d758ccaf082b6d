"""CPU of a benchmark phase, split by process: long-lived services by their own counters, everything that
exits during the phase (runners, conmon, runc, podman's cleanup command, helpers) by the kernel's process
accounting (BSD acct v3, turned on for the phase only and off again).

Why process accounting: a runner, its conmon and the OCI runtime live for a fraction of a second and are
reaped by init (conmon double-forks), so sampling /proc misses most of them and no parent's children
counters see them. The kernel writes one record per exiting process (uid, command name, CPU in 1/100 s);
runners are recognised by their uid (the sandbox user's subordinate range), the rest by uid and name.
Everything the machine did besides (other sessions on a shared machine) is "not ours".
"""

from __future__ import annotations

import ctypes
import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ACCT_RECORD = 64  # struct acct_v3
AHZ = 100


def _comp(value: int) -> int:
    """comp_t: 13-bit mantissa, 3-bit base-8 exponent."""
    return (value & 0x1FFF) << (3 * (value >> 13))


def subuid_range(user: str) -> range:
    for line in Path("/etc/subuid").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == user:
            start, count = rest.split(":")
            return range(int(start), int(start) + int(count))
    return range(0)


@dataclass(frozen=True)
class Exited:
    """One process accounting record: who ran it, its command name (16 bytes), its CPU seconds."""

    uid: int
    pid: int
    comm: str
    cpu: float


def exited_processes(path: Path) -> Iterator[Exited]:
    """The records (acct v3) the kernel wrote to `path` while accounting was on."""
    data = path.read_bytes()
    for offset in range(0, len(data) - ACCT_RECORD + 1, ACCT_RECORD):
        record = data[offset:offset + ACCT_RECORD]
        if record[1] != 3:
            continue
        uid, _gid, pid = struct.unpack_from("<III", record, 8)
        utime, stime = struct.unpack_from("<HH", record, 32)
        comm = record[48:64].split(b"\0", 1)[0].decode(errors="replace")
        yield Exited(uid, pid, comm, (_comp(utime) + _comp(stime)) / AHZ)


class Accounting:
    """Process accounting from `start()` (or entering a `with` block) into a temporary file; `stop()` turns it off
    and keeps the `records`."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.path = Path()
        self.records: list[Exited] = []

    def start(self) -> None:
        handle, path = tempfile.mkstemp(prefix="bench-acct-")
        os.close(handle)
        self.path = Path(path)
        if self._libc.acct(str(self.path).encode()) != 0:
            self.path.unlink()
            raise OSError(ctypes.get_errno(), "acct(): process accounting needs root and a kernel with it")

    def stop(self) -> list[Exited]:
        self._libc.acct(None)
        self.records = list(exited_processes(self.path))
        self.path.unlink()
        return self.records

    def __enter__(self) -> Accounting:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def busy_seconds() -> float:
    """The whole machine's busy CPU time (all cores, all but idle and iowait)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return sum(int(x) for i, x in enumerate(fields) if i not in (3, 4)) / os.sysconf("SC_CLK_TCK")


def own_seconds(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


@dataclass
class CpuSplit:
    """`start()` before the phase, `stop()` after it; `groups` names the long-lived processes to watch."""

    sandbox_user: str
    sandbox_uid: int
    groups: dict[str, Callable[[], list[int]]]
    seconds: dict[str, float] = field(default_factory=dict)
    _accounting: Accounting | None = None
    _procs: dict[int, tuple[str, psutil.Process, float]] = field(default_factory=dict)
    _busy: float = 0.0

    def _watch(self) -> dict[int, tuple[str, psutil.Process]]:
        found: dict[int, tuple[str, psutil.Process]] = {}
        for name, pids in self.groups.items():
            for pid in pids():
                try:
                    root = psutil.Process(pid)
                    for proc in [root, *root.children(recursive=True)]:
                        found.setdefault(proc.pid, (name, proc))
                except psutil.Error:
                    continue
        return found

    def start(self) -> None:
        self._accounting = Accounting()
        try:
            self._accounting.start()
        except OSError:
            self._accounting = None  # no process accounting here (not root, or not in the kernel): long-lived only
        self._procs = {pid: (name, proc, own_seconds(proc)) for pid, (name, proc) in self._watch().items()}
        self._busy = busy_seconds()

    def stop(self) -> dict[str, float]:
        busy = busy_seconds() - self._busy
        seconds: dict[str, float] = {}
        for name, proc, before in self._procs.values():
            if proc.is_running():
                seconds[name] = seconds.get(name, 0.0) + own_seconds(proc) - before
        for pid, (name, proc) in self._watch().items():  # started during the phase (a gunicorn worker...)
            if pid not in self._procs:
                seconds[name] = seconds.get(name, 0.0) + own_seconds(proc)
        if self._accounting is not None:
            for name, value in self._exited(self._accounting.stop()).items():
                seconds[name] = seconds.get(name, 0.0) + value
        seconds["not ours (other sessions, kernel threads, exits we cannot place)"] = busy - sum(seconds.values())
        seconds["whole machine"] = busy
        self.seconds = seconds
        return seconds

    def _exited(self, records: list[Exited]) -> dict[str, float]:
        runners = subuid_range(self.sandbox_user)
        watched = set(self._procs)
        out: dict[str, float] = {}
        for record in records:
            if record.pid in watched:
                continue  # counted from its own counters
            name = self._classify(record.uid, record.comm, runners)
            if name:
                out[name] = out.get(name, 0.0) + record.cpu
        return out

    def _classify(self, uid: int, comm: str, runners: range) -> str:
        if uid in runners:
            return "runners (entrypoint and script)"
        if uid != self.sandbox_uid:
            return ""
        if comm.startswith("conmon"):
            return "conmon"
        if comm.startswith("runc") or comm == "exe":
            return "OCI runtime (runc)"
        if comm == "podman":
            return "podman CLI (conmon's container cleanup)"
        return f"sandbox user, other ({comm})" if comm in ("slirp4netns", "nft", "catatonit") else \
            "sandbox user, other"


def podman_service_pids(uid: int) -> list[int]:
    """The sandbox user's `podman system service` (long-lived)."""
    pids = []
    for proc in psutil.process_iter(["uids", "cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if proc.info["uids"].real == uid and os.path.basename(cmd[0]) == "podman" and cmd[1:3] == [
                    "system", "service"]:
                pids.append(proc.pid)
        except (psutil.Error, TypeError, IndexError):
            continue
    return pids
