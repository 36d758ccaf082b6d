"""Compose the sandbox from its config and serve it under gunicorn.

One worker process on purpose: slots, the run threads and the outbox live in it. gthread
gives each request a thread, so a slow client never blocks a run's hand-off.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

import falcon
from gunicorn.app.base import BaseApplication

from sandbox.app import create_app
from sandbox.config import SandboxConfig
from sandbox.driver import ContainerDriver
from sandbox.egress import EgressProxy
from sandbox.egress_policy import allow_entries
from sandbox.image import default_image
from sandbox.limits import RunnerLimits, detect
from sandbox.outbox import Outbox
from sandbox.podman_api import PodmanAPI
from sandbox.pool import WarmPool
from sandbox.runs import RunService
from sandbox.seccomp_profile import write_profile

log = logging.getLogger("sandbox")


@dataclass
class Sandbox:
    config: SandboxConfig
    api: PodmanAPI
    driver: ContainerDriver
    outbox: Outbox
    service: RunService
    pool: WarmPool
    egress: EgressProxy | None

    def health(self) -> dict[str, object]:
        busy = self.service.busy
        return {
            "status": "ok" if self.api.ping() else "podman unreachable",
            "node": self.config.node_name,
            "slots": {"total": self.config.slots, "busy": busy, "free": self.config.slots - busy},
            "image": self.driver.image,
            "limits": {**self.driver.enforcement.as_dict(), "memory_bytes": self.config.memory,
                       "pids_limit": self.config.pids, "timeout_s": self.config.timeout,
                       "output_chars": self.config.output_limit, "network": self.config.network},
            "podman_warnings": list(self.driver.extra_warnings),
            "outbox": {"pending": self.outbox.pending(), "in_flight": self.service.busy},
            "runs_finished": self.service.finished,
            "warm_pool": self.pool.health(),
            "egress": {"mode": self.config.network,
                       "allow": allow_entries(self.config.egress_allow),
                       **(self.egress.stats() if self.egress is not None else {})},
        }

    def stop(self) -> None:
        self.pool.stop()
        self.service.shutdown(wait=True)
        self.outbox.flush(timeout=5)
        self.outbox.stop()
        if self.egress is not None:
            self.egress.shutdown()
        self.api.close()


def build(config: SandboxConfig) -> Sandbox:
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    api = PodmanAPI(config.podman_url)
    image = config.image or default_image()
    if not api.image_exists(image):
        raise SystemExit(f"seatable-sandbox serve: runner image {image} is missing; "
                         "run 'seatable-sandbox build-runner'")
    enforcement = detect(api.client.info())
    limits = RunnerLimits(memory=config.memory, pids=config.pids, cpus=config.cpus,
                          timeout=config.timeout, tmpfs_size=config.tmpfs_size)
    profile = config.seccomp_profile or str(write_profile(config.state_dir))
    egress = None if config.network == "none" else EgressProxy(config.egress_dir, clear=True)
    driver = ContainerDriver(api=api, image=image, limits=limits, enforcement=enforcement,
                             node=config.node_name, output_limit=config.output_limit,
                             seccomp_profile=profile, time_zone=config.time_zone,
                             egress=egress, egress_host_dir=config.egress_host_dir)
    outbox = Outbox(config.state_dir / "outbox.sqlite", config.scheduler_url, config.scheduler_token)
    pool = WarmPool(driver, config.warm_pool, config.preimport, config.pool_min_available)
    service = RunService(driver=driver, outbox=outbox, slots=config.slots, timeout=config.timeout,
                         time_zone=config.time_zone,
                         alternative_file_server_root=config.alternative_file_server_root,
                         pool=pool if config.warm_pool else None, network=config.network,
                         egress_allow=config.egress_allow, ca_bundle=config.ca_bundle)
    lost = service.recover()
    if lost:
        log.warning("%d run(s) were in flight when the sandbox stopped; reported as lost", lost)
    outbox.start()
    pool.start()
    return Sandbox(config, api, driver, outbox, service, pool, egress)


class SandboxServer(BaseApplication):
    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.sandbox: Sandbox | None = None
        super().__init__()

    def load_config(self) -> None:
        sandbox_ref = self

        def worker_exit(server: Any, worker: Any) -> None:
            if sandbox_ref.sandbox is not None:
                sandbox_ref.sandbox.stop()

        settings = {
            "bind": self.config.bind,
            "workers": 1,
            "worker_class": "gthread",
            "threads": self.config.slots + 8,
            "timeout": 0,
            "graceful_timeout": self.config.timeout + 10,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": self.config.log_level,
            "proc_name": "seatable-sandbox",
            "worker_exit": worker_exit,
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> falcon.App:
        self.sandbox = build(self.config)
        return create_app(self.config.auth_token, self.sandbox.service, self.sandbox.health)


def serve() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = SandboxConfig.from_env()
    except ValueError as exc:
        print(f"seatable-sandbox serve: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    SandboxServer(config).run()
