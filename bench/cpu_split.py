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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ACCT_RECORD = 64  # struct acct_v3
AHZ = 100


def _comp(value: int) -> int:
    """comp_t: 13-bit mantissa, 3-bit base-8 exponent."""
    return (value & 0x1FFF) << (3 * (value >> 13))


def _subuid_range(user: str) -> range:
    for line in Path("/etc/subuid").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == user:
            start, count = rest.split(":")
            return range(int(start), int(start) + int(count))
    return range(0)


def busy_seconds() -> float:
    """The whole machine's busy CPU time (all cores, all but idle and iowait)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return sum(int(x) for i, x in enumerate(fields) if i not in (3, 4)) / os.sysconf("SC_CLK_TCK")


def _own_seconds(proc: psutil.Process) -> float:
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
    _acct: Path | None = None
    _libc: ctypes.CDLL | None = None
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
        handle, path = tempfile.mkstemp(prefix="bench-acct-")
        os.close(handle)
        self._acct = Path(path)
        self._libc = ctypes.CDLL(None, use_errno=True)
        if self._libc.acct(str(self._acct).encode()) != 0:
            self._acct.unlink()
            self._acct = None  # no process accounting here (not root, or not in the kernel): long-lived only
        self._procs = {pid: (name, proc, _own_seconds(proc)) for pid, (name, proc) in self._watch().items()}
        self._busy = busy_seconds()

    def stop(self) -> dict[str, float]:
        busy = busy_seconds() - self._busy
        seconds: dict[str, float] = {}
        for name, proc, before in self._procs.values():
            if proc.is_running():
                seconds[name] = seconds.get(name, 0.0) + _own_seconds(proc) - before
        for pid, (name, proc) in self._watch().items():  # started during the phase (a gunicorn worker...)
            if pid not in self._procs:
                seconds[name] = seconds.get(name, 0.0) + _own_seconds(proc)
        if self._acct is not None and self._libc is not None:
            self._libc.acct(None)
            for name, value in self._exited().items():
                seconds[name] = seconds.get(name, 0.0) + value
            self._acct.unlink()
        seconds["not ours (other sessions, kernel threads, exits we cannot place)"] = busy - sum(seconds.values())
        seconds["whole machine"] = busy
        self.seconds = seconds
        return seconds

    def _exited(self) -> dict[str, float]:
        assert self._acct is not None
        runners = _subuid_range(self.sandbox_user)
        watched = set(self._procs)
        data = self._acct.read_bytes()
        out: dict[str, float] = {}
        for offset in range(0, len(data) - ACCT_RECORD + 1, ACCT_RECORD):
            record = data[offset:offset + ACCT_RECORD]
            if record[1] != 3:
                continue
            uid, _gid, pid, _ppid = struct.unpack_from("<IIII", record, 8)
            utime, stime = struct.unpack_from("<HH", record, 32)
            comm = record[48:64].split(b"\0", 1)[0].decode(errors="replace")
            if pid in watched:
                continue  # counted from its own counters
            cpu = (_comp(utime) + _comp(stime)) / AHZ
            name = self._classify(uid, comm, runners)
            if name:
                out[name] = out.get(name, 0.0) + cpu
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
