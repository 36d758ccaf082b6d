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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox import texts
from sandbox.cgroups import RunCgroups
from sandbox.egress import EgressPolicy, EgressProxy, RunEgressReport
from sandbox.identity import RunnerIdentities
from sandbox.image import ENTRYPOINT_COMMAND, RUNNER_FILES, runner_files_dir
from sandbox.limits import OOM_SCORE_IDLE, Enforcement, RunnerLimits, human_size
from sandbox.network import CLOSED, OpenNetwork
from sandbox.outcome import READY, ControlStream, Evidence, Outcome, decide
from sandbox.output import OutputCap
from sandbox.podman_api import STDERR, AttachStream, PodmanAPI, PodmanError
from sandbox.runner_options import RunnerOptions

log = logging.getLogger(__name__)

LABEL = "io.seatable.sandbox"
LABEL_SCRIPT = "io.seatable.script-id"
LABEL_UID = "io.seatable.runner-uid"
IMAGE_UID = 1000  # the image's own user; runners without managed identities run as it


EGRESS_MOUNT = "/run/egress"


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

    def body(self, script_id: int) -> dict[str, object]:
        """upstream's /script-result/ body."""
        return {
            "script_id": script_id,
            "success": self.success,
            "return_code": self.return_code,
            "output": self.output,
            "started_at": self.started_at,
            "spend_time": round(self.spend_time, 3),
        }


@dataclass
class Runner:
    """A started runner container whose entrypoint waits for its one job on stdin."""

    container: str
    stream: AttachStream
    created: float = field(default_factory=time.monotonic)
    preimport: frozenset[str] = frozenset()  # modules its interpreter imports before the job
    ready: bool = False  # its entrypoint said it waits for the job (pre-imports done)

    def check_ready(self) -> bool:
        """Without waiting: has the ready line arrived? What came before it is only logged."""
        if not self.ready:
            for _kind, payload in self.stream.drain():
                if READY in payload:
                    self.ready = True
                elif payload.strip():
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
    _uids: dict[str, int] = field(default_factory=dict)
    _keys_lock: threading.Lock = field(default_factory=threading.Lock)

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
            # Output arrives over attach; no log file of it on the host's disk.
            "log_configuration": {"driver": "none"},
            "hostname": "runner",
            # Idle until its job arrives; the entrypoint then raises itself to OOM_SCORE_RUNNING.
            "oom_score_adj": OOM_SCORE_IDLE,
        }
        if self.identities is not None:
            # One fixed mapping for all runners (one copy of the image), a uid of its own in it.
            spec["userns"] = {"nsmode": "private"}
            spec["idmappings"] = self.identities.mapping.spec()
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
        if self.cgroups is not None:
            try:
                self.cgroups.create(created.id, self.limits.memory, self.limits.pids, self.limits.cpus)
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
        if timed_out:
            self._stop(runner.container)
        if control.notes:
            log.warning("runner %s said on its control stream: %s", runner.container[:12], " | ".join(control.notes))
        outcome = self.outcome(runner.container, timed_out, control, timeout)
        output = cap.text() + cap.notice()
        if outcome.notice:
            output += texts.notice(outcome.notice)
        result = RunResult(outcome.return_code, output, started_at, spend, outcome.kind)
        lines = self._egress_lines(runner.container)
        if lines and result.output and not result.output.endswith("\n"):
            lines = "\n" + lines
        result.output += lines
        return result

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

    def cleanup(self, container: str) -> None:
        try:
            self.api.remove(container)
        except PodmanError as exc:
            log.warning("could not remove container %s: %s", container[:12], exc)
        else:
            # Gone with all its processes: its cgroups can go and its uid may serve another run.
            if self.cgroups is not None:
                self.cgroups.remove(container)
            with self._keys_lock:
                uid = self._uids.pop(container, None)
            if uid is not None and self.identities is not None:
                self.identities.release(uid)
        self._release_egress(container)
        if self.network is not None:
            self.network.release(container)

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
        runners = self.api.labelled(LABEL)  # of every node of this Podman user
        if self.identities is not None:
            self.identities.reclaim({int(c["Labels"][LABEL_UID]) for c in runners
                                     if (c.get("Labels") or {}).get(LABEL_UID, "").isdigit()})
        if self.cgroups is not None:
            self.cgroups.reclaim({c["Id"] for c in runners})

    def orphans(self) -> list[str]:
        """Containers of this node that no run owns (left by a crash)."""
        return [c["Id"] for c in self.api.labelled(f"{LABEL}={self.node}")]
