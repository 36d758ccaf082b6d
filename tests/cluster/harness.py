"""The pipeline as a cluster on one machine: a Galera cluster, sandbox hosts in network namespaces, several
dispatchers and scheduler APIs, all real processes. `./dev cluster`, the cluster tests and `bench/cluster.py`
start it from here.

    root namespace (the LAN side, bridge address G = 10.213.N.1)
      SeaTable stand-in        G:<port>                   (in this process)
      scheduler API a1..aN     G:<port>, gunicorn          -> Galera node (writes through the one given)
      dispatcher d1..dN        dispatch --maintain         -> Galera node
      Galera node1..node3      127.0.0.1:<ports>
    namespace per sandbox host (10.213.N.11, .12, .13)
      seatable-sandbox serve   <address>:8088, as the sandbox user; callbacks to its scheduler API
      Podman API service       the host's own, on a Unix socket of the sandbox user; the slirp4netns of its
                               runners (PYTHON_RUNNER_NETWORK=open) run here, so they share the host's link

Which Galera node each scheduler process writes through is in `Topology.db_node_of`; by default the two
dispatchers write through different nodes and the APIs through a third and a second, so claims, hand-offs
and results of one run meet on different nodes. Every process is started here and only those are signalled.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

from sandbox.host import SandboxUser, configured_user, lookup_user
from tests.seatable_stub import StubServer
from tests.seatable_stub.server import ThreadingWSGIServer
from tests.support.galera import GaleraCluster
from tests.support.harness import answers, log_tails, wait_until
from tests.support.netns import LAN, Namespace
from tests.support.pipeline import REPO, Service
from tests.support.podman import START_SECS, VENV_BIN, PodmanService, free_port

Say = Callable[[str], None]
SANDBOX_PORT = 8088


@dataclass(frozen=True)
class Topology:
    """What runs, and the timing of the pipeline under test (the quick forms shorten windows, never skip one)."""

    sandboxes: int = 3
    dispatchers: int = 2
    apis: int = 2
    galera_nodes: int = 3
    slots: int = 4  # PYTHON_STARTER_THREAD_COUNT per sandbox host
    warm_pool: int = 2
    process_timeout: int = 60
    handoff_secs: int = 15
    lost_grace_secs: int = 20
    unreachable_secs: int = 1800
    sweep_interval: int = 2
    api_workers: int = 1

    def db_node_of(self, role: str, index: int) -> int:
        """Galera node a scheduler process writes through: dispatchers from the first node on, APIs from the
        last one back, so with two of each over three nodes: d1 node1, d2 node2, a1 node3, a2 node2."""
        if role == "dispatcher":
            return index % self.galera_nodes
        return (self.galera_nodes - 1 - index) % self.galera_nodes

    def api_of_sandbox(self, index: int) -> int:
        return index % self.apis


@dataclass
class SandboxHost:
    """One sandbox host: its namespace, its own Podman API service, the sandbox service in the namespace."""

    index: int
    ns: Namespace
    node_name: str
    state_dir: Path
    podman: PodmanService
    log: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"s{self.index + 1}"

    @property
    def url(self) -> str:
        return f"http://{self.ns.address}:{SANDBOX_PORT}"

    @property
    def podman_url(self) -> str:
        return self.podman.url

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Cluster:
    topology: Topology = field(default_factory=Topology)
    say: Say = print
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    sandbox_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cluster-", dir="/tmp")))
    extra_scheduler_env: dict[str, str] = field(default_factory=dict)
    galera: GaleraCluster | None = None
    lan: LAN | None = None
    stub: StubServer | None = None
    user: SandboxUser | None = None
    hosts: list[SandboxHost] = field(default_factory=list)
    apis: list[Service] = field(default_factory=list)
    api_ports: list[int] = field(default_factory=list)
    dispatchers: list[Service | None] = field(default_factory=list)

    # --- the whole topology -------------------------------------------------------------------------------

    def start(self) -> Cluster:
        t = self.topology
        try:
            self.workdir.chmod(0o755)
            self.user = lookup_user(configured_user())
            self.say(f"cluster: a {t.galera_nodes}-node Galera cluster (mariadb-server + galera-4)")
            self.galera = GaleraCluster(size=t.galera_nodes, say=self.say).start()
            self.lan = LAN().create()
            self.say(f"cluster: LAN bridge {self.lan.bridge}, {self.lan.gateway}/24 in the root namespace")
            # Dispatchers fetch task files many at a time: a deeper listen backlog than socketserver's 5.
            ThreadingWSGIServer.request_queue_size = 256
            self.stub = StubServer(self.secret, host=self.lan.gateway, port=free_port()).start()
            self.say(f"cluster: SeaTable stand-in on {self.stub.url}")
            self.api_ports = [free_port() for _ in range(t.apis)]
            self._scheduler_cli(0, "migrate")
            for i in range(t.sandboxes):
                self.start_host(i)
            for i in range(t.apis):
                self.start_api(i)
            for i in range(t.dispatchers):
                self.start_dispatcher(i)
        except BaseException:
            self.stop(keep_workdir=True)
            raise
        return self

    def stop(self, keep_workdir: bool = False) -> None:
        """Stop everything this harness started, remove its runners, namespaces, bridge and datadirs."""
        for service in [*self.dispatchers, *self.apis]:
            if service is not None:
                service.stop()
        for host in self.hosts:
            self.stop_host(host.index)
            if host.podman.running:
                with contextlib.suppress(Exception):
                    self.remove_containers(host.index)
            host.podman.stop()
        if self.lan is not None:
            self.lan.remove()
        if self.stub is not None:
            self.stub.stop()
        if self.galera is not None:
            self.galera.stop()
        if not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs(self, lines: int = 40) -> str:
        return log_tails(self.workdir, lines)

    # --- scheduler APIs and dispatchers -------------------------------------------------------------------

    def api_url(self, index: int) -> str:
        assert self.lan is not None
        return f"http://{self.lan.gateway}:{self.api_ports[index]}"

    @property
    def scheduler_url(self) -> str:
        """The first API: where a client submits runs unless it picks one."""
        return self.api_url(0)

    def scheduler_env(self, db_node: int, api: int | None = None, hosts: int | None = None) -> dict[str, str]:
        """Environment of a scheduler process writing through Galera node `db_node`; an API's when `api` is
        given; handing runs to the first `hosts` sandbox hosts (all by default)."""
        assert self.galera is not None and self.stub is not None and self.lan is not None
        t = self.topology
        db = self.galera.settings(db_node)
        urls = [h.url for h in self.hosts][:hosts] if self.hosts else self._host_urls()[:hosts]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PYTHON_", "SEATABLE_"))}
        env.update({
            "PYTHONPATH": str(REPO),
            "PYTHON_SCHEDULER_AUTH_TOKEN": self.secret,
            "SEATABLE_SERVER_URL": self.stub.url,
            "PYTHON_SANDBOX_URLS": ",".join(urls),
            "PYTHON_SANDBOX_AUTH_TOKEN": self.sandbox_token,
            "PYTHON_STARTER_TOTAL_THREAD_COUNT": str(t.slots * len(urls)),
            "PYTHON_PROCESS_TIMEOUT": str(t.process_timeout),
            "PYTHON_DISPATCH_HANDOFF_SECS": str(t.handoff_secs),
            "PYTHON_SANDBOX_LOST_GRACE_SECS": str(t.lost_grace_secs),
            "PYTHON_SANDBOX_UNREACHABLE_SECS": str(t.unreachable_secs),
            "PYTHON_SWEEP_INTERVAL_SECS": str(t.sweep_interval),
            # One team sends every run of a fault: faults that hold runs long (Podman away) would otherwise turn the
            # later ones into rate-limit answers, which say nothing about exactly once (the limit has its own tests).
            "PYTHON_SCHEDULER_RATE_LIMIT_PERCENT": "1",
            "PYTHON_SCHEDULER_LOG_LEVEL": "INFO",
            "PYTHON_SCHEDULER_WORKERS": str(t.api_workers),
            "DB_HOST": db.host,
            "DB_PORT": str(db.port),
            "DB_USER": db.user,
            "DB_PASSWD": db.password,
            "DB_ROOT_PASSWD": "",
            "DATABASE_NAME": db.database,
            **self.extra_scheduler_env,
        })
        if api is not None:
            env["PYTHON_SCHEDULER_BIND_HOST"] = self.lan.gateway
            env["PYTHON_SCHEDULER_PORT"] = str(self.api_ports[api])
            env["PYTHON_SCHEDULER_URL"] = self.api_url(api)
        return env

    def _host_urls(self) -> list[str]:
        assert self.lan is not None
        return [f"http://10.213.{self.lan.subnet}.{11 + i}:{SANDBOX_PORT}" for i in range(self.topology.sandboxes)]

    def _scheduler_cli(self, db_node: int, *args: str) -> None:
        result = subprocess.run([sys.executable, "-m", "scheduler.cli", *args], cwd=REPO,
                                env=self.scheduler_env(db_node), capture_output=True, text=True, timeout=300,
                                check=False)
        if result.returncode != 0:
            raise RuntimeError(f"seatable-scheduler {' '.join(args)} failed:\n{result.stderr[-2000:]}")

    def _spawn(self, name: str, env: dict[str, str], *args: str) -> Service:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen([sys.executable, "-m", "scheduler.cli", *args], cwd=REPO, env=env,
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return Service(name, process, log)

    def start_api(self, index: int) -> None:
        db_node = self.topology.db_node_of("api", index)
        service = self._spawn(f"api{index + 1}", self.scheduler_env(db_node, api=index), "serve")
        if index < len(self.apis):
            self.apis[index] = service
        else:
            self.apis.append(service)
        url = self.api_url(index)
        wait_until(lambda: service.process.poll() is None and answers(url + "/ping/"), 90,
                   f"scheduler API a{index + 1} on {url}")
        self.say(f"cluster: scheduler API a{index + 1} on {url}, writes through galera node{db_node + 1}")

    def start_dispatcher(self, index: int, hosts: int | None = None) -> Service:
        """`dispatch --maintain` number `index`, handing runs to the first `hosts` sandbox hosts (default all)."""
        db_node = self.topology.db_node_of("dispatcher", index)
        while len(self.dispatchers) <= index:
            self.dispatchers.append(None)
        service = self._spawn(f"dispatcher{index + 1}", self.scheduler_env(db_node, hosts=hosts),
                              "dispatch", "--maintain")
        self.dispatchers[index] = service
        self.say(f"cluster: dispatcher d{index + 1} (dispatch --maintain), writes through galera node{db_node + 1}")
        return service

    def stop_dispatcher(self, index: int) -> None:
        """SIGTERM: the batch in hand is finished, then the process exits."""
        service = self.dispatchers[index]
        if service is not None:
            service.stop()

    def kill_dispatcher(self, index: int) -> None:
        """SIGKILL: the process dies between any two statements, claims and hand-offs in hand."""
        service = self.dispatchers[index]
        assert service is not None
        service.process.send_signal(signal.SIGKILL)
        service.process.wait(timeout=30)

    # --- sandbox hosts ------------------------------------------------------------------------------------

    def start_host(self, index: int) -> SandboxHost:
        """Namespace, Podman API service and sandbox of host `index` (the first start creates them)."""
        assert self.user is not None and self.lan is not None
        t = self.topology
        if index < len(self.hosts):
            host = self.hosts[index]
        else:
            ns = self.lan.add()
            state = self.workdir / f"s{index + 1}-state"
            state.mkdir()
            os.chown(state, self.user.uid, self.user.gid)
            # The host's own Podman API service runs in its namespace: the slirp4netns of each runner on the open
            # network is its child, so a host cut off has runners cut off too.
            user = self.user.name
            podman = PodmanService(self.user, f"cluster-{self.tag}-s{index + 1}",
                                   self.workdir / f"podman-s{index + 1}.log",
                                   wrap=lambda argv: ns.command(argv, user=user))
            host = SandboxHost(index=index, ns=ns, node_name=f"cluster-{self.tag}-s{index + 1}", state_dir=state,
                               podman=podman, log=self.workdir / f"sandbox{index + 1}.log", env={})
            self.hosts.append(host)
        if not host.podman.running:
            host.podman.start()
        api = t.api_of_sandbox(index)
        host.env = {
            "PYTHON_SANDBOX_AUTH_TOKEN": self.sandbox_token,
            "PYTHON_SCHEDULER_URL": self.api_url(api),
            "PYTHON_SANDBOX_BIND": f"{host.ns.address}:{SANDBOX_PORT}",
            "PYTHON_SANDBOX_STATE_DIR": str(host.state_dir),
            "PYTHON_SANDBOX_NODE_NAME": host.node_name,
            "PYTHON_SANDBOX_PODMAN_URL": host.podman_url,
            "PYTHON_STARTER_THREAD_COUNT": str(t.slots),
            "PYTHON_PROCESS_TIMEOUT": str(t.process_timeout),
            "PYTHON_SANDBOX_WARM_POOL": str(t.warm_pool),
        }
        with open(host.log, "ab") as log:
            host.process = subprocess.Popen(
                host.ns.command([str(VENV_BIN / "seatable-sandbox"), "serve"], user=self.user.name),
                env={**self.user.env(), **host.env}, cwd="/", stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        wait_until(lambda: self._host_up(host), START_SECS, f"sandbox host {host.name} on {host.url}")
        self.say(f"cluster: sandbox host {host.name} in namespace {host.ns.name} on {host.url}, "
                 f"{t.slots} slots, callbacks to a{api + 1}")
        return host

    def _host_up(self, host: SandboxHost) -> bool:
        if not host.running:
            tail = host.log.read_text(errors="replace")[-2000:] if host.log.exists() else ""
            raise RuntimeError(f"sandbox host {host.name} exited:\n{tail}")
        return answers(host.url + "/ping/")

    def stop_host(self, index: int, sig: int = signal.SIGTERM) -> None:
        """As the systemd unit's KillMode=mixed: `sig` to the sandbox's main process (to all of its processes
        when it is SIGKILL), SIGKILL to what is left after the timeout."""
        host = self.hosts[index]
        if not host.running:
            return
        assert host.process is not None
        if sig == signal.SIGKILL:
            os.killpg(host.process.pid, sig)
        else:
            host.process.send_signal(sig)
        try:
            host.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(host.process.pid, signal.SIGKILL)
            host.process.wait()

    def cut(self, index: int) -> None:
        """Pull host `index`'s cable: its namespace's link goes down; the processes in it keep running."""
        self.hosts[index].ns.cut()

    def restore(self, index: int) -> None:
        self.hosts[index].ns.restore()

    def containers(self, index: int) -> list[str]:
        """Host `index`'s runner containers (by its node label), whatever their state."""
        return self.hosts[index].podman.containers(self.hosts[index].node_name)

    def remove_containers(self, index: int) -> None:
        self.hosts[index].podman.remove_containers(self.hosts[index].node_name)

    # --- the database -------------------------------------------------------------------------------------

    def query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """One query through any synced Galera node, with causal reads (sees every committed write)."""
        assert self.galera is not None
        node = self.galera.any_synced()
        settings = self.galera.settings(self.galera.nodes.index(node))
        connection = settings.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute("SET SESSION wsrep_sync_wait = 1")
                cursor.execute(sql, args)
                return list(cursor.fetchall())
        finally:
            connection.close()

    def try_query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]] | None:
        try:
            return self.query(sql, args)
        except (pymysql.err.MySQLError, RuntimeError):
            return None

    # --- for a person -------------------------------------------------------------------------------------

    def describe(self) -> str:
        """The topology as a person poking at it needs it: addresses, who writes where, how to cut a host."""
        assert self.galera is not None and self.lan is not None and self.stub is not None
        lines = [f"SeaTable stand-in     {self.stub.url}   (token: {self.secret})"]
        for i, _api in enumerate(self.apis):
            lines.append(f"scheduler API a{i + 1}     {self.api_url(i)}   -> galera "
                         f"node{self.topology.db_node_of('api', i) + 1}")
        for i, service in enumerate(self.dispatchers):
            pid = service.process.pid if service else "-"
            lines.append(f"dispatcher d{i + 1}         pid {pid}   -> galera "
                         f"node{self.topology.db_node_of('dispatcher', i) + 1}")
        for i, node in enumerate(self.galera.nodes):
            lines.append(f"galera node{i + 1}          127.0.0.1:{node.ports.sql}   "
                         f"(mariadb -S {node.socket} -u root)")
        for host in self.hosts:
            lines.append(f"sandbox host {host.name}       {host.url}   namespace {host.ns.name}   "
                         f"(cut: ip link set {host.ns.host_link} down)")
        lines.append(f"logs                  {self.workdir}/*.log")
        return "\n".join(lines)
