"""What a runner image offers, asked once at start: its Python, the entrypoint's second seccomp filter, user site.

Any image with a python3 can be the runner image (the sandbox mounts its own entrypoint into it), so the sandbox
runs one container of it with the real runner spec and the entrypoint's --probe before it accepts runs. An image
that cannot run the entrypoint stops the start with one line; one without pyseccomp runs under Podman's profile
alone, which carries the same denials, and /health says the second filter is absent.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from sandbox.cgroups import CgroupError
from sandbox.driver import EGRESS_MOUNT, ContainerDriver
from sandbox.limits import human_size
from sandbox.network import CLOSED
from sandbox.podman_api import STDOUT, PodmanError

log = logging.getLogger(__name__)
PROBE_TIMEOUT = 120.0  # a busy host; the probe itself imports nothing heavy


class ProbeError(Exception):
    """The runner image cannot run the sandbox's entrypoint; the message says why in one line."""


@dataclass(frozen=True)
class RunnerFacts:
    python: str
    executable: str
    second_filter: bool
    user_site: str

    def as_dict(self) -> dict[str, Any]:
        return {"python": self.python, "executable": self.executable,
                "seccomp_second_filter": "present" if self.second_filter else
                "absent (no pyseccomp in the image; Podman's profile carries the same denials)",
                "user_site": self.user_site or None}


def probe(driver: ContainerDriver, timeout: float = PROBE_TIMEOUT) -> RunnerFacts:
    spec = driver.spec("probe")
    spec["command"] = [*spec["command"], "--probe"]
    # No way out for the probe: it reads no job and starts no relay (and has no egress socket of its own).
    spec["mounts"] = [mount for mount in spec["mounts"] if mount["destination"] != EGRESS_MOUNT]
    for key in ("network_options", "dns_server", "dns_search"):
        spec.pop(key, None)
    spec.update(CLOSED)
    try:
        created = driver.api.create(spec)
    except PodmanError as exc:
        raise ProbeError(f"runner image {driver.image}: {exc}") from None
    try:
        driver.bound(created.id)
        stream = driver.api.attach(created.id)
        try:
            driver.api.start(created.id)
            output = b""
            for frame in stream.frames(time.monotonic() + timeout):
                if frame is None:
                    raise ProbeError(f"runner image {driver.image}: the entrypoint did not answer within {timeout:g} s")
                kind, payload = frame
                output += payload if kind == STDOUT else b""
                if kind != STDOUT and payload.strip():
                    log.warning("runner probe: %s", payload.decode(errors="replace").strip()[:300])
        finally:
            stream.close()
        status = driver.api.wait(created.id)
    except (PodmanError, CgroupError) as exc:
        hint = _memory_hint(driver, created.id)
        raise ProbeError(f"runner image {driver.image} cannot run the sandbox's entrypoint: {exc}{hint}") from None
    finally:
        driver.cleanup(created.id)
    return _facts(driver.image, status, output)


def _memory_hint(driver: ContainerDriver, container: str) -> str:
    """Our own words when the run's memory limit killed the runtime's init: the runtime's own message for it varies
    with the moment of the kill ("container init was OOM-killed", "writing syncT ...: broken pipe")."""
    try:
        killed = driver.oom_killed(container)
    except Exception:  # Podman away as well: its own error says enough
        return ""
    if not killed:
        return ""
    return (f" (the runners' memory limit, {human_size(driver.limits.memory)}, is too low for the container runtime "
            "itself: raise PYTHON_RUNNER_CONTAINER_MEMORY)")


def _facts(image: str, status: int, output: bytes) -> RunnerFacts:
    lines = output.decode(errors="replace").strip().splitlines()
    try:
        report = json.loads(lines[-1]) if status == 0 and lines else None
    except ValueError:
        report = None
    if not isinstance(report, dict):
        shown = lines[-1][:200] if lines else "no output"
        raise ProbeError(f"runner image {image}: the entrypoint's probe failed (exit {status}: {shown})")
    return RunnerFacts(python=str(report.get("python", "")), executable=str(report.get("executable", "")),
                       second_filter=bool(report.get("second_filter")), user_site=str(report.get("user_site") or ""))
