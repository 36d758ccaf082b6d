"""What ended a run, decided from what the host observes, never from what the script writes.

The evidence, in order of trust:
- the host's own timer (time limit);
- the exit record pid 1 of the runner writes on the control stream (the container's stderr).
  Pid 1 is the trusted entrypoint: the script runs in a child that closed the control stream
  before it read the job, pid 1 is non-dumpable (no /proc/1/fd, no /proc/1/mem for the
  script), and its pid namespace can neither SIGKILL nor stop it. The record carries the
  kernel's wait status and the child's own CPU time and CPU limit;
- Podman's container state (exit code, OOMKilled) and the run's cgroup OOM counter, asked only
  when the record is missing or the script was SIGKILLed (so the warm path makes no extra call).

The control stream is parsed with a bounded buffer: every byte is scanned once, and past a
small cap the rest is counted and dropped (the record is then not trusted).
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from sandbox import texts

log = logging.getLogger(__name__)

EXIT_RECORD = b"\x00seatable-runner-exit "
READY = b"\x00seatable-runner-ready"
CONTROL_MAX_BYTES = 64 << 10  # pid 1 writes a ready line and one record; pre-import warnings at most
CONTROL_LINE_MAX = 8 << 10
NOTES_KEPT = 5
TIMEOUT_RETURN_CODE = -1  # upstream's return code for a run stopped by the time limit
EXIT_OUT_OF_MEMORY = 137  # the entrypoint's exit for MemoryError under RLIMIT_AS, and 128 + SIGKILL
# The kernel stops a process at the hard CPU limit by its process-wide CPU clock, which runs a little
# ahead of the time wait4() reports (measured: SIGKILL at 1.9 s reported for a 2 s limit).
CPU_SLACK = 0.05
CPU_SLACK_MIN = 0.25


@dataclass(frozen=True)
class ExitRecord:
    """How the script's process ended, as pid 1 saw it from wait4()."""

    status: int  # raw wait status
    cpu_s: float = 0.0
    cpu_limit: tuple[float, float] | None = None  # RLIMIT_CPU (soft, hard) at its death

    @classmethod
    def parse(cls, payload: bytes) -> ExitRecord | None:
        try:
            data = json.loads(payload)
            status = data["status"]
            if not isinstance(status, int) or isinstance(status, bool) or not 0 <= status < 1 << 16:
                return None
            limit = data.get("cpu_limit_s")
            cpu_limit = (float(limit[0]), float(limit[1])) if isinstance(limit, list) and len(limit) == 2 else None
            return cls(status, float(data.get("cpu_s", 0.0)), cpu_limit)
        except (ValueError, KeyError, TypeError, IndexError):
            return None

    @property
    def exit_code(self) -> int | None:
        return (self.status >> 8) & 0xFF if self.status & 0x7F == 0 else None

    @property
    def signal(self) -> int | None:
        sig = self.status & 0x7F
        return sig if sig not in (0, 0x7F) else None


@dataclass
class ControlStream:
    """The runner's control stream, parsed once and bounded in memory whatever arrives on it."""

    record: ExitRecord | None = None
    overflow: bool = False
    bytes_seen: int = 0
    notes: list[str] = field(default_factory=list)
    _line: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> None:
        self.bytes_seen += len(data)
        if self.overflow:
            return
        if self.bytes_seen > CONTROL_MAX_BYTES:
            self._overflowed()
            return
        start = len(self._line)  # only the new bytes can hold a newline not yet seen
        self._line += data
        while (end := self._line.find(b"\n", start)) >= 0:
            self._take(bytes(self._line[:end]))
            del self._line[:end + 1]
            start = 0
        if len(self._line) > CONTROL_LINE_MAX:
            self._overflowed()

    def _take(self, line: bytes) -> None:
        if line.startswith(EXIT_RECORD):
            if self.record is None:
                self.record = ExitRecord.parse(line[len(EXIT_RECORD):])
        elif line != READY and line.strip() and len(self.notes) < NOTES_KEPT:
            self.notes.append(line.decode(errors="replace")[:300])

    def _overflowed(self) -> None:
        """More than pid 1 ever writes: something else reached the stream; trust none of it."""
        self.overflow = True
        self.record = None
        self._line = bytearray()

    def trusted_record(self) -> ExitRecord | None:
        return None if self.overflow else self.record


@dataclass(frozen=True)
class Outcome:
    kind: str  # exited, timeout, cpu_limit, out_of_memory, signal, error
    return_code: int | None
    notice: str = ""  # appended to the output, "" for an ordinary exit


@dataclass(frozen=True)
class Evidence:
    """Podman's and the kernel's view of a finished runner, asked lazily (each may cost a call)."""

    container_exit: Callable[[], int]  # waits for the container; its exit code
    oom_killed: Callable[[], bool]  # Podman's OOMKilled or the run's cgroup OOM counter


def decide(timed_out: bool, control: ControlStream, evidence: Evidence, *, timeout: int,
           memory_limit: str, cpu_limit_s: float) -> Outcome:
    """The outcome of a run from the host's observations (see the module docstring)."""
    if timed_out:
        return Outcome("timeout", TIMEOUT_RETURN_CODE, texts.TIME_LIMIT.format(seconds=timeout))
    out_of_memory = Outcome("out_of_memory", EXIT_OUT_OF_MEMORY, texts.OUT_OF_MEMORY.format(limit=memory_limit))
    record = control.trusted_record()
    if record is None:
        if control.overflow:
            log.error("runner control stream over %d bytes: exit record not trusted", CONTROL_MAX_BYTES)
        code = evidence.container_exit()
        if evidence.oom_killed():
            return out_of_memory
        if code > 128:
            return _signalled(code - 128)
        return Outcome("error", None, texts.SANDBOX_ERROR.format(reason=texts.NO_EXIT_RECORD.format(code=code)))
    if record.exit_code is not None:
        # 137 from the script's own process is the entrypoint's MemoryError exit (RLIMIT_AS).
        return out_of_memory if record.exit_code == EXIT_OUT_OF_MEMORY else Outcome("exited", record.exit_code)
    sig = record.signal or 0
    soft, hard = record.cpu_limit or (cpu_limit_s + 1, cpu_limit_s + 1)
    if sig == signal.SIGXCPU:  # sent at the soft limit, which the kernel then raised by one second
        return _cpu_limit(sig, soft - 1)
    if sig == signal.SIGKILL:
        if evidence.oom_killed():
            return out_of_memory
        if record.cpu_s >= hard - max(CPU_SLACK_MIN, CPU_SLACK * hard):
            return _cpu_limit(sig, hard)
        # Not the CPU limit by pid 1's record: say what it saw, should the kernel's count have differed.
        log.info("runner's script killed by SIGKILL below its CPU limit: %.2f s of CPU, limits %s",
                 record.cpu_s, record.cpu_limit or "not read")
    return _signalled(sig)


def _cpu_limit(sig: int, seconds: float) -> Outcome:
    return Outcome("cpu_limit", 128 + sig, texts.CPU_LIMIT.format(seconds=f"{seconds:g}"))


def _signalled(sig: int) -> Outcome:
    return Outcome("signal", 128 + sig, texts.KILLED_BY_SIGNAL.format(signal=sig))
