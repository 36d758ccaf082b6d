"""ContainerDriver: one script, one single-use runner container, through the Podman API.

The job (script, input, environment with the API token) goes in over the attach stream,
so it is never part of the container's configuration and never touches the host's disk.
Output streams back through the same connection and is capped as it arrives; the runner's
pid 1 reports how the script ended on the control stream, and `sandbox.outcome` decides.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox import texts
from sandbox.cgroups import RUN_CGROUPS_ANNOTATION, RunCgroups
from sandbox.egress import EgressPolicy, EgressProxy, RunEgressReport
from sandbox.identity import RunnerIdentities
from sandbox.image import ENTRYPOINT_COMMAND, RUNNER_FILES, runner_files_dir
from sandbox.limits import OOM_SCORE_IDLE, Enforcement, RunnerLimits, human_size
from sandbox.network import CLOSED, OpenNetwork
from sandbox.outcome import READY, ControlStream, Evidence, Outcome, decide
from sandbox.output import OutputCap
from sandbox.podman_api import STDERR, AttachStream, PodmanAPI, PodmanError, unreachable
from sandbox.runner_monitor import CLEANUP_ANNOTATION
from sandbox.runner_options import RunnerOptions

log = logging.getLogger(__name__)

LABEL = "io.seatable.sandbox"
LABEL_SCRIPT = "io.seatable.script-id"
LABEL_UID = "io.seatable.runner-uid"
IMAGE_UID = 1000  # the image's own user; runners without managed identities run as it


EGRESS_MOUNT = "/run/egress"
# When the Podman service goes away during a run (its attach is cut), the run waits for it to come back up to
# this long past its own time limit, then reads the container's exit and its log; past it the run is lost.
PODMAN_RETURN_SLACK = 10.0
RETRY_FIRST, RETRY_MAX = 0.25, 4.0  # backoff between attempts to reach Podman again
POLL = 0.25  # how often a run read from its log asks whether its container still runs


@dataclass(frozen=True)
class Job:
    script_id: int
    script: bytes | str  # the file's bytes, which Python decodes as it would a file; a str is taken as UTF-8
    input: str
    env: dict[str, str]
    egress: EgressPolicy | None = None  # where this run may connect; None: nowhere
    ca_bundle: str = ""  # extra CA certificates (PEM) the runner trusts

    def line(self) -> bytes:
        script = self.script.encode() if isinstance(self.script, str) else self.script
        job: dict[str, object] = {"script_b64": base64.b64encode(script).decode("ascii"), "input": self.input,
                                  "env": self.env}
        if self.ca_bundle:
            job["ca_bundle"] = self.ca_bundle
        return json.dumps(job).encode() + b"\n"


@dataclass
class RunResult:
    return_code: int | None
    output: str
    started_at: float
    spend_time: float
    outcome: str  # exited, timeout, cpu_limit, out_of_memory, signal, error, lost, fetch_failed

    @property
    def success(self) -> bool:
        return self.outcome == "exited" and self.return_code == 0

    @property
    def kind(self) -> str:
        """What ended the run, in the scheduler's words (scheduler/outcomes.py)."""
        if self.outcome == "exited":
            return "success" if self.return_code == 0 else "failed"
        if self.outcome == "signal":
            return "cpu_limit" if self.return_code == 128 + signal.SIGXCPU else "killed_by_signal"
        return _KINDS.get(self.outcome, "failed")

    def body(self, script_id: int) -> dict[str, object]:
        """upstream's /script-result/ body, plus the outcome kind (upstream's scheduler ignores it)."""
        return {
            "script_id": script_id,
            "success": self.success,
            "return_code": self.return_code,
            "output": self.output,
            "started_at": self.started_at,
            "spend_time": round(self.spend_time, 3),
            "outcome": self.kind,
        }


@dataclass(frozen=True)
class Settled:
    """How a run ended (None: unknown, Podman did not come back in time) and the output and control stream
    it was decided from."""

    outcome: Outcome | None
    cap: OutputCap
    control: ControlStream
    gap: bool = False  # part of the output is missing (the log was started over while the attach was cut)
    from_log: bool = False


_KINDS = {
    "timeout": "time_limit",
    "output_limit": "output_limit",
    "out_of_memory": "out_of_memory",
    "error": "sandbox_error",
    "lost": "sandbox_lost",
    "fetch_failed": "fetch_failed",
}


PREIMPORT_FAILED = b"runner: preimport of "  # the entrypoint's line for a module it could not pre-import


@dataclass
class Runner:
    """A started runner container whose entrypoint waits for its one job on stdin."""

    container: str
    stream: AttachStream
    created: float = field(default_factory=time.monotonic)
    preimport: frozenset[str] = frozenset()  # modules its interpreter imports before the job
    ready: bool = False  # its entrypoint said it waits for the job (pre-imports done)
    # A pre-import ran out of memory (the rlimit fallback: the runner lives on, its memory reserved).
    preimport_short_of_memory: bool = False

    def check_ready(self) -> bool:
        """Without waiting: has the ready line arrived? What came before it is only logged."""
        if not self.ready:
            for _kind, payload in self.stream.drain():
                if READY in payload:
                    self.ready = True
                elif payload.strip():
                    if PREIMPORT_FAILED in payload and b"MemoryError" in payload:
                        self.preimport_short_of_memory = True
                    log.warning("warm runner %s: %s", self.container[:12], payload.decode(errors="replace")[:200])
        return self.ready

    @property
    def gone(self) -> bool:
        """Its container ended before it got a job (seen by check_ready)."""
        return self.stream.eof


@dataclass
class ContainerDriver:
    api: PodmanAPI
    image: str
    limits: RunnerLimits
    enforcement: Enforcement
    node: str
    output_limit: int
    seccomp_profile: str = ""
    time_zone: str = "UTC"
    extra_warnings: list[str] = field(default_factory=list)
    # The way out for runners (network modes seatable and open); None: no way out at all.
    egress: EgressProxy | None = None
    # The egress proxy's directory as the Podman host sees it, when the sandbox runs in a container.
    egress_host_dir: str = ""
    # The trusted entrypoint and relay, mounted read-only into every runner: a directory as the Podman host sees it.
    runner_files: str = field(default_factory=lambda: str(runner_files_dir()))
    # The run's own cgroup OOM counter where per-run cgroups exist (issue 13); None: not known.
    oom_counter: Callable[[str], int | None] | None = None
    # A host uid of its own for each live runner (sandbox.identity); None: all run as the image's user.
    identities: RunnerIdentities | None = None
    # Per-run memory/pids cgroups the sandbox makes itself (cgroup-v1-delegated); None: Podman's or none.
    cgroups: RunCgroups | None = None
    # The open network (an interface, rules outside the runner); None: loopback only.
    network: OpenNetwork | None = None
    # The admin's mounts and hosts from upstream's PYTHON_RUNNER_OTHER_OPTIONS (checked at start).
    options: RunnerOptions = field(default_factory=RunnerOptions)
    _egress_keys: dict[str, str] = field(default_factory=dict)
    _unremoved: set[str] = field(default_factory=set)  # removal failed (Podman down?): retried by retry_removals
    _uids: dict[str, int] = field(default_factory=dict)
    _keys_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def log_max_bytes(self) -> int:
        """Room for the output limit in UTF-8 plus the log's per-line prefixes; past it conmon starts the file
        over, and a cut log is noticed because it does not begin with what the attach already delivered."""
        return 4 * self.output_limit + (1 << 20)

    def __post_init__(self) -> None:
        if self.cgroups is not None:
            # What cgroup v2's memory.oom.group does: one OOM kill in a run ends the whole run.
            self.cgroups.on_oom = self.api.kill
            if self.oom_counter is None:
                self.oom_counter = self.cgroups.oom_events

    def spec(self, label: str, preimport: str = "", key: str = "", uid: int = IMAGE_UID) -> dict[str, Any]:
        key = key or secrets.token_hex(6)
        command = self.limits.entrypoint_args(self.enforcement)
        if preimport:
            command += ["--preimport", preimport]
        mounts: list[dict[str, Any]] = [{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                                         "options": ["rw", "nosuid", "nodev", f"size={self.limits.tmpfs_size}"]},
                                        {"destination": RUNNER_FILES, "type": "bind", "source": self.runner_files,
                                         "options": ["ro", "rbind", "nosuid", "nodev", "noexec"]}]
        if self.egress is not None:
            base = self.egress_host_dir or str(self.egress.base_dir)
            mounts.append({"destination": EGRESS_MOUNT, "type": "bind", "source": f"{base}/{key}",
                           "options": ["ro", "rbind", "nosuid", "nodev", "noexec"]})
        mounts += [mount.spec() for mount in self.options.mounts]
        spec: dict[str, Any] = {
            "image": self.image,
            "name": f"seatable-run-{label}-{key}",
            # The image's own python3 runs the mounted entrypoint, whatever the image's ENTRYPOINT.
            "entrypoint": list(ENTRYPOINT_COMMAND),
            "command": command,
            "user": f"{uid}:{uid}",
            "read_only_filesystem": True,
            "mounts": mounts,
            # /dev/shm (POSIX shared memory) as big as /tmp: both tmpfs, both charged to the run's memory.
            "shm_size": self.limits.tmpfs_size,
            "cap_drop": ["ALL"],
            "no_new_privileges": True,
            **(self.network.spec() if self.network is not None else CLOSED),
            **self.options.spec(),
            "labels": {LABEL: self.node, LABEL_SCRIPT: label, LABEL_UID: str(uid)},
            "stdin": True,
            "terminal": False,
            "r_limits": self.limits.r_limits(),
            "resource_limits": self.limits.resource_limits(self.enforcement),
            # Output arrives over attach. The log file (in the container's own storage, gone with it, bounded) is
            # read only when the attach was cut: the Podman service restarted while the script ran on under conmon.
            "log_configuration": {"driver": "k8s-file", "size": self.log_max_bytes},
            "hostname": "runner",
            # Idle until its job arrives; the entrypoint then raises itself to OOM_SCORE_RUNNING.
            "oom_score_adj": OOM_SCORE_IDLE,
        }
        if self.identities is not None:
            # One fixed mapping for all runners (one copy of the image), a uid of its own in it.
            spec["userns"] = {"nsmode": "private"}
            spec["idmappings"] = self.identities.mapping.spec()
        # Removed by the sandbox itself: its monitor starts no cleanup process when it ends (runner_monitor).
        spec["annotations"] = {CLEANUP_ANNOTATION: "sandbox"}
        if self.cgroups is not None:  # the runtime wrapper refuses to start it outside its own cgroups
            spec["annotations"][RUN_CGROUPS_ANNOTATION] = "required"
        unified = self.limits.unified(self.enforcement)
        if unified:
            spec["unified"] = unified
        if self.seccomp_profile:
            spec["seccomp_profile_path"] = self.seccomp_profile
        return spec

    def prepare(self, label: str, preimport: str = "", modules: frozenset[str] = frozenset()) -> Runner:
        """Create, attach and start a runner; its entrypoint then waits for one job."""
        key = secrets.token_hex(6)
        uid = self.identities.claim() if self.identities is not None else IMAGE_UID
        if self.egress is not None:
            self.egress.open(key)
        try:
            created = self.api.create(self.spec(label, preimport, key, uid))
        except BaseException:
            self._close_egress(key)
            if self.identities is not None:
                self.identities.release(uid)
            raise
        with self._keys_lock:
            self._uids[created.id] = uid
            if self.egress is not None:
                self._egress_keys[created.id] = key
        try:
            self.bound(created.id)
        except BaseException:
            self.cleanup(created.id)
            raise
        for warning in created.warnings:
            if warning not in self.extra_warnings:
                self.extra_warnings.append(warning)
        try:
            stream = self.api.attach(created.id)
            try:
                self.api.start(created.id)
                if self.cgroups is not None:
                    self.cgroups.hold_at_limit(created.id)
                if self.network is not None:  # its rules before its job: the entrypoint waits for the job
                    state = self.api.inspect(created.id)["State"]
                    self.network.attach(created.id, int(state["Pid"]), int(state["ConmonPid"]))
            except BaseException:
                stream.close()
                raise
        except BaseException:
            self.cleanup(created.id)
            raise
        return Runner(created.id, stream, preimport=modules)

    def bound(self, container: str) -> None:
        """The per-run cgroups of a created container, before it starts (the runtime wrapper refuses it
        without them); nothing to do where Podman applies the limits itself or none apply."""
        if self.cgroups is not None:
            self.cgroups.create(container, self.limits.memory, self.limits.pids, self.limits.cpus)

    def run(self, job: Job, timeout: int, on_container: Callable[[str], None],
            on_started: Callable[[float], None], runner: Runner | None = None) -> RunResult:
        """Run a job on a given (warm) runner, or on a new one (the cold path)."""
        runner = runner or self.prepare(str(job.script_id))
        on_container(runner.container)
        try:
            return self.execute(runner, job, timeout, on_started)
        except BaseException:
            self.cleanup(runner.container)
            raise

    def execute(self, runner: Runner, job: Job, timeout: int, on_started: Callable[[float], None]) -> RunResult:
        cap = OutputCap(self.output_limit)
        control = ControlStream()
        try:
            with self._keys_lock:
                key = self._egress_keys.get(runner.container)
            if self.egress is not None and key and job.egress is not None:
                self.egress.arm(key, job.egress)  # unarmed, every connection is refused
            if self.network is not None:
                self.network.arm(runner.container, job.egress)
            started_at = time.time()
            clock = time.monotonic()
            on_started(started_at)
            runner.stream.send(job.line())
            timed_out = self._pump(runner.stream, cap, control, clock + timeout)
        finally:
            # Before any kill: conmon blocks on an attach socket nobody reads.
            runner.stream.close()
        spend = time.monotonic() - clock
        settled = self._settle(runner.container, clock + timeout, timed_out, Settled(None, cap, control), timeout)
        if settled.from_log:  # it ended (or was stopped) while the sandbox waited for Podman, not at the cut
            spend = min(time.monotonic() - clock, float(timeout))
        if settled.control.notes:
            log.warning("runner %s said on its control stream: %s", runner.container[:12],
                        " | ".join(settled.control.notes))
        outcome = settled.outcome
        output = settled.cap.text() + settled.cap.notice() + (texts.notice(texts.OUTPUT_GAP) if settled.gap else "")
        if outcome is None:
            result = RunResult(None, output + texts.notice(texts.PODMAN_LOST), started_at, spend, "lost")
        else:
            output += texts.notice(outcome.notice) if outcome.notice else ""
            result = RunResult(outcome.return_code, output, started_at, spend, outcome.kind)
        lines = self._egress_lines(runner.container)
        if lines and result.output and not result.output.endswith("\n"):
            lines = "\n" + lines
        result.output += lines
        return result

    def _settle(self, container: str, deadline: float, timed_out: bool, attached: Settled,
                timeout: int) -> Settled:
        """The run's outcome, and its output: the attach's, or the log's when the attach was cut before pid 1's
        record (the Podman service died; conmon ran the script on). While Podman is unreachable, retried with
        backoff up to PODMAN_RETURN_SLACK past the run's deadline; no outcome when it does not come back by then."""
        control = attached.control
        if timed_out:  # the host's timer decided; a runner Podman cannot kill now goes with its removal
            try:
                self._stop(container)
            except Exception as exc:
                if not unreachable(exc):
                    raise
                log.warning("runner %s: Podman unreachable at the time limit; it is removed once Podman is back",
                            container[:12])
            return Settled(self.outcome(container, True, control, timeout), attached.cap, control)
        give_up = deadline + PODMAN_RETURN_SLACK
        delay, warned = RETRY_FIRST, False
        cut = control.trusted_record() is None and not control.overflow
        while True:
            try:
                if cut:
                    return self._from_log(container, deadline, attached.cap, timeout)
                return Settled(self.outcome(container, False, control, timeout), attached.cap, control)
            except Exception as exc:
                if not unreachable(exc):
                    raise
                now = time.monotonic()
                if not warned:
                    log.warning("runner %s: Podman unreachable (%s); waiting up to %.0f s for it",
                                container[:12], type(exc).__name__, max(0.0, give_up - now))
                    warned = True
                if now + delay > give_up:
                    log.error("runner %s: Podman did not come back before the run's deadline; run lost", container[:12])
                    return attached
                time.sleep(delay)
                delay = min(2 * delay, RETRY_MAX)

    def _from_log(self, container: str, deadline: float, attached: OutputCap, timeout: int) -> Settled:
        """Wait (to the run's deadline) for the container to end, then decide from its log file."""
        timed_out = False
        while self.api.running(container):
            left = deadline - time.monotonic()
            if left <= 0:
                self._stop(container)
                timed_out = True
                break
            time.sleep(min(POLL, left))
        cap, control = OutputCap(self.output_limit), ControlStream()
        for kind, data in self.api.logs(container):
            if kind == STDERR:
                control.feed(data)
            else:
                cap.feed(data)
        outcome = self.outcome(container, timed_out, control, timeout)
        if attached.reached or not cap.text().startswith(attached.text()):
            # The attach already holds all that is kept, or the log was started over (a flood): keep the attach's.
            return Settled(outcome, attached, control, gap=not attached.reached, from_log=True)
        return Settled(outcome, cap, control, from_log=True)

    def _stop(self, container: str) -> None:
        """Kill a runner and wait until it is gone: its processes count against per-uid limits
        (RLIMIT_NPROC) until then, and the next run must not meet them."""
        self.api.kill(container)
        try:
            self.api.wait(container)
        except Exception as exc:  # removal (cleanup) forces it anyway
            log.warning("runner %s: no exit seen after the kill: %s", container[:12], exc)

    def outcome(self, container: str, timed_out: bool, control: ControlStream, timeout: int) -> Outcome:
        """What ended the run; Podman is asked only when pid 1's record does not settle it."""
        state: dict[str, Any] = {}

        def container_exit() -> int:
            if "code" not in state:
                state["code"] = self.api.wait(container)
            return int(state["code"])

        def oom_killed() -> bool:
            container_exit()  # Podman sets OOMKilled when it has seen the container exit
            counted = self.oom_counter(container) if self.oom_counter is not None else None
            if counted:
                return True
            return bool(self.api.inspect(container).get("State", {}).get("OOMKilled"))

        return decide(timed_out, control, Evidence(container_exit, oom_killed), timeout=timeout,
                      memory_limit=human_size(self.limits.memory), cpu_limit_s=float(self.limits.cpu_seconds))

    def _egress_lines(self, container: str) -> str:
        """The run's refused and failed connections, one short line each, after its output."""
        report = self._release_egress(container)
        lines = report.refused + report.failed if report is not None else []
        if self.network is not None:
            lines += self.network.report(container)
        return "".join(f"[{line}]\n" for line in lines)

    def _release_egress(self, container: str) -> RunEgressReport | None:
        """Close the container's egress socket (once) and return its report."""
        with self._keys_lock:
            key = self._egress_keys.pop(container, "")
        return self._close_egress(key)

    def _close_egress(self, key: str) -> RunEgressReport | None:
        if self.egress is None or not key:
            return None
        try:
            return self.egress.close(key)
        except KeyError:
            return None  # already closed

    @staticmethod
    def _pump(stream: Any, cap: OutputCap, control: ControlStream, deadline: float) -> bool:
        """Route frames until EOF: stdout to the cap (counted only, once it is reached), the
        control stream to its parser. True when the time limit ended the run first."""
        for frame in stream.frames(deadline):
            if frame is None:
                # pid 1 reported in time; only the container's teardown is late
                return control.trusted_record() is None
            kind, data = frame
            if kind == STDERR:
                control.feed(data)
            else:
                cap.feed(data)
        return False

    def oom_killed(self, container: str) -> bool:
        """Did the kernel find this run over its memory bound? Host-observed; ask before cleanup()."""
        if self.cgroups is not None:
            return self.cgroups.oom_events(container) > 0
        return bool(self.api.inspect(container).get("State", {}).get("OOMKilled"))

    def runner_uid(self, container: str) -> int | None:
        """The container uid this runner runs as (its host uid: identities.mapping.host_uid of it)."""
        with self._keys_lock:
            return self._uids.get(container)

    def cleanup(self, container: str) -> bool:
        """Remove a runner and release what it held; False when Podman failed (retry_removals tries again)."""
        self._release_egress(container)  # its socket closes now: whatever still runs there has no way out
        try:
            self.api.remove(container)
        except PodmanError as exc:
            with self._keys_lock:
                first = container not in self._unremoved
                self._unremoved.add(container)
            if first:
                log.warning("could not remove container %s (retried later): %s", container[:12], exc)
            return False
        with self._keys_lock:
            self._unremoved.discard(container)
            uid = self._uids.pop(container, None)
        # Gone with all its processes: its cgroups and network can go and its uid may serve another run.
        if self.cgroups is not None:
            self.cgroups.remove(container)
        if uid is not None and self.identities is not None:
            self.identities.release(uid)
        if self.network is not None:
            self.network.release(container)
        return True

    def retry_removals(self) -> int:
        """Remove the runners whose removal failed before (the health thread calls this while Podman answers);
        how many are still left."""
        with self._keys_lock:
            pending = sorted(self._unremoved)
        left = 0
        for container in pending:
            if self.cleanup(container):
                log.info("removed container %s on a later attempt", container[:12])
            else:
                left += 1
        return left

    def remove_leftovers(self) -> int:
        """At a graceful stop, when no run is left: remove every runner of this node (failed removals included);
        how many could not be removed (the next start removes them)."""
        try:
            for container in self.orphans():
                self.cleanup(container)
            return self.retry_removals()
        except Exception as exc:  # Podman gone: the next start's recover() removes them
            log.warning("runner containers of this node left at stop: %s", exc)
            return len(self._unremoved)

    def prepare_id_mapping(self) -> float:
        """Create and remove one runner (never started) so that the image's id-shifted copy for the fixed
        mapping exists before any run needs it (build-runner makes it too; a compose image may not have
        it). Seconds it took: tens the first time, milliseconds after."""
        if self.identities is None:
            return 0.0
        started = time.monotonic()
        spec = self.spec("idmap")
        spec["mounts"] = [m for m in spec["mounts"] if m["type"] != "bind"]  # no egress socket for it
        created = self.api.create(spec)
        self.api.remove(created.id)
        return time.monotonic() - started

    def reclaim(self) -> None:
        """At start, after this node's orphans are removed: drop uid claims and cgroups they left."""
        if self.identities is not None:
            runners = self.api.labelled(LABEL)  # of every node of this Podman user
            self.identities.reclaim({int(c["Labels"][LABEL_UID]) for c in runners
                                     if (c.get("Labels") or {}).get(LABEL_UID, "").isdigit()})
        if self.cgroups is not None:
            self.cgroups.reclaim(lambda: {c["Id"] for c in self.api.labelled(LABEL)})

    def orphans(self) -> list[str]:
        """Containers of this node that no run owns (left by a crash)."""
        return [c["Id"] for c in self.api.labelled(f"{LABEL}={self.node}")]
