"""Compose the sandbox from its config and serve it under gunicorn.

One worker process on purpose: slots, the run threads and the outbox live in it. Each request
gets a thread once its head has arrived; heads are read by the worker's event loop with a
deadline (httpworker), so slow or hostile clients never hold the threads that hand off runs.
/ready and /health are built from the background health check (sandbox.health): no Podman
call per request.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import falcon
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from prometheus_client import CollectorRegistry

from observability import logs
from sandbox.app import create_app
from sandbox.config import SandboxConfig, forget_seatable_secret, log_settings
from sandbox.driver import ContainerDriver
from sandbox.egress import EgressProxy
from sandbox.egress_policy import allow_entries
from sandbox.health import PODMAN_TIMEOUT, NodeHealth
from sandbox.image import default_image, runner_files_dir
from sandbox.isolation import Isolation
from sandbox.isolation import probe as probe_isolation
from sandbox.limits import Enforcement, RunnerLimits
from sandbox.metrics import NodeCollector, RunMetrics
from sandbox.netguard import NetGuardError
from sandbox.network import OpenNetwork, start_open_network
from sandbox.outbox import Outbox
from sandbox.podman_api import PodmanAPI
from sandbox.pool import WarmPool
from sandbox.runner_probe import ProbeError, RunnerFacts, probe
from sandbox.runs import RunService
from sandbox.seccomp_profile import write_profile
from sandbox.tls import gunicorn_settings

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
    node_health: NodeHealth
    registry: CollectorRegistry
    isolation: Isolation
    runner: RunnerFacts | None = None
    network: OpenNetwork | None = None

    def slots(self) -> dict[str, int]:
        busy = self.service.busy
        return {"total": self.config.slots, "busy": busy, "free": max(0, self.config.slots - busy)}

    def ready(self) -> tuple[bool, dict[str, object]]:
        """The dispatcher's poll: can this node take runs, and how many."""
        reason = self.node_health.refusal()
        if reason is not None:
            return False, {"error": reason, "node": self.config.node_name}
        return True, {"node": self.config.node_name, "slots": self.slots()}

    def health(self) -> tuple[bool, dict[str, object]]:
        problems = self.node_health.problems()
        check = self.node_health.last
        return not problems, {
            "status": "unhealthy" if problems else "ok",
            "problems": problems,
            "node": self.config.node_name,
            "slots": self.slots(),
            "image": self.driver.image,
            "runner": self.runner.as_dict() if self.runner is not None else None,
            "limits": limits_report(self.driver.enforcement, self.config),
            "isolation": self.isolation.health(),
            "podman_warnings": list(self.driver.extra_warnings),
            "outbox": {**self.outbox.health(), "in_flight": self.service.busy,
                       "max_bytes": self.config.outbox_max_bytes,
                       "disk_free_bytes": check.disk_free_bytes if check else None},
            "runs_finished": self.service.finished,
            "warm_pool": {**self.pool.health(rss=False),
                          "idle_runner_rss_bytes": list(self.node_health.idle_runner_rss)},
            "egress": {"mode": self.config.network,
                       "allow": allow_entries(self.config.egress_allow),
                       **(self.egress.stats() if self.egress is not None else {}),
                       **(self.network.stats() if self.network is not None else {})},
        }

    def stop(self) -> None:
        self.node_health.stop()
        self.pool.stop()
        self.service.shutdown(wait=True)
        left = self.driver.remove_leftovers()  # no run is left: every runner of this node is a leftover
        if left:
            log.warning("%d runner container(s) of this node could not be removed; the next start removes them", left)
        self.outbox.flush(timeout=5)
        self.outbox.stop()
        if self.egress is not None:
            self.egress.shutdown()
        if self.isolation.cgroups is not None:
            self.isolation.cgroups.stop()
        if self.network is not None:
            self.network.stop()
        self.api.close()


def limits_report(enforcement: Enforcement, config: SandboxConfig) -> dict[str, object]:
    """/health's "limits": what is enforced and how (mechanism: cgroup-v2, cgroup-v1-delegated or rlimit)."""
    return {**enforcement.as_dict(), "memory_bytes": config.memory, "pids_limit": config.pids,
            "timeout_s": config.timeout, "output_chars": config.output_limit, "network": config.network}


def build(config: SandboxConfig) -> Sandbox:
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    api = PodmanAPI(config.podman_url)
    unreachable = api.ping_error()
    if unreachable is not None:
        _fatal(f"no Podman API at {config.podman_url} ({unreachable.detail}); "
               "run 'seatable-sandbox host-setup' as root")
    image = config.image or default_image()
    if not api.image_exists(image):
        _fatal(f"runner image {image} is missing; run 'seatable-sandbox build-runner'")
    isolation = probe_isolation(api.client.info(), owner=config.node_name, state_dir=config.state_dir)
    limits = RunnerLimits(memory=config.memory, pids=config.pids, cpus=config.cpus,
                          timeout=config.timeout, tmpfs_size=config.tmpfs_size)
    profile = config.seccomp_profile or str(write_profile(config.state_dir))
    egress = EgressProxy(config.egress_dir, clear=True) if config.network == "seatable" else None
    network = open_network(config) if config.network == "open" else None
    driver = ContainerDriver(api=api, image=image, limits=limits, enforcement=isolation.enforcement,
                             node=config.node_name, output_limit=config.output_limit,
                             seccomp_profile=profile, time_zone=config.time_zone,
                             egress=egress, egress_host_dir=config.egress_host_dir,
                             runner_files=config.runner_files or str(runner_files_dir()),
                             identities=isolation.identities, cgroups=isolation.cgroups, network=network,
                             options=config.runner_options)
    for note in config.runner_options.notes:
        log.info("%s", note)
    took = driver.prepare_id_mapping()
    if took > 2:
        log.info("made the runner image's copy for the runners' id mapping in %.0f s (once per image)", took)
    try:
        runner = probe(driver)
    except ProbeError as exc:
        _fatal(str(exc))
    if not runner.second_filter:
        log.warning("runner image %s has no pyseccomp: runs are filtered by Podman's profile alone", image)
    outbox = Outbox(config.state_dir / "outbox.sqlite", config.scheduler_url,
                    verify=config.callback_tls.verify, client_cert=config.callback_tls.client_pair,
                    max_body_bytes=config.max_body_bytes, tombstone_secs=config.tombstone_secs)
    pool = WarmPool(driver, config.warm_pool, config.preimport, config.pool_min_available)
    node_health = NodeHealth(PodmanAPI(config.podman_url, timeout=PODMAN_TIMEOUT), image, outbox,
                             config.state_dir, config.outbox_max_bytes,
                             min_free_bytes=max(2 * config.max_body_bytes, 64 << 20),
                             pool_rss=pool.idle_rss if config.warm_pool else None,
                             sweep=driver.retry_removals)
    registry = CollectorRegistry()
    service = RunService(node=config.node_name, metrics=RunMetrics(registry),
                         driver=driver, outbox=outbox, slots=config.slots, timeout=config.timeout,
                         time_zone=config.time_zone,
                         alternative_file_server_root=config.alternative_file_server_root,
                         pool=pool if config.warm_pool else None, network=config.network,
                         egress_allow=config.egress_allow, ca_bundle=config.ca_bundle,
                         extra_env=dict(config.runner_options.env),
                         refusal=node_health.refusal)
    lost = service.recover()
    if lost:
        log.warning("%d run(s) were in flight when the sandbox stopped; reported as lost", lost)
    driver.reclaim()
    log.info("runners: %s limits, a host uid of their own each (%d available)",
             isolation.enforcement.mechanism, isolation.identities.capacity)
    outbox.start()
    pool.start()
    node_health.check_now()  # the first answer of /ready is already a real one
    node_health.start()
    sandbox = Sandbox(config, api, driver, outbox, service, pool, egress, node_health, registry, isolation, runner,
                      network)
    registry.register(NodeCollector(sandbox, lambda: len(driver.orphans())))
    return sandbox


def _fatal(message: str) -> NoReturn:
    """One line, then gunicorn's boot-error exit status: the master stops instead of starting worker after worker."""
    print(f"seatable-sandbox serve: {message}", file=sys.stderr, flush=True)
    raise SystemExit(Arbiter.WORKER_BOOT_ERROR)


def open_network(config: SandboxConfig) -> OpenNetwork:
    """The open mode's rules helper, started now: a host that cannot run it stops the service with one line."""
    try:
        return start_open_network(config)
    except NetGuardError as exc:
        _fatal(str(exc))


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
            "worker_class": "httpworker.HeadFirstWorker",
            "threads": self.config.slots + 8,
            # Dispatchers spread their calls over pool threads, each with its own connection: past gunicorn's
            # default 2 s each call would pay a new connection on both sides.
            "keepalive": 30,
            "timeout": 0,
            "graceful_timeout": self.config.timeout + 10,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": self.config.log_level.lower(),
            "logger_class": "observability.logs.GunicornLogger",
            "proc_name": "seatable-sandbox",
            "worker_exit": worker_exit,
            **gunicorn_settings(self.config.serve_tls.cert, self.config.serve_tls.key,
                                self.config.serve_tls.client_ca),
            # gunicorn 27's control socket (~/.gunicorn/gunicorn.ctl) can stop and reconfigure the server; the
            # services are managed by their supervisor (systemd, compose), so it stays off.
            "control_socket_disable": True,
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> falcon.App:
        self.sandbox = build(self.config)
        sandbox = self.sandbox
        return create_app(self.config.accepted_tokens, sandbox.service, sandbox.health, sandbox.ready,
                          metrics=(lambda: sandbox.registry, self.config.metrics_credential))


def serve() -> None:
    try:
        settings = log_settings()
        logs.configure(settings.level, settings.format, settings.to_stdout)
        config = SandboxConfig.from_env()
    except ValueError as exc:
        print(f"seatable-sandbox serve: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    forget_seatable_secret()
    SandboxServer(config).run()
