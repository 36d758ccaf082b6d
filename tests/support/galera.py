"""A three-node MariaDB Galera cluster on loopback, from Debian's mariadb-server and galera-4, without systemd.

Each node has its own datadir, SQL port, group-communication port, IST port and SST port under one temp dir.
The first node bootstraps the cluster (`--wsrep-new-cluster`); the others join it through
`wsrep_cluster_address=gcomm://<all three>` and receive the data by rsync SST (works offline, needs only
`rsync`). A node can be killed (SIGKILL, as a crashed host) or stopped and started again: it rejoins through
the same address, by IST when the donors' gcache still holds what it missed, else by SST.

Small on purpose, the machine is shared: 64 MB buffer pool, 16 MB redo log, 16 MB gcache. Durability comes
from replication, so `innodb_flush_log_at_trx_commit=2` as Galera's own documentation suggests.

A run of the harness that was itself killed leaves its servers behind; the next `GaleraCluster.start()`
stops those (found by the owner pid file in their base directory, only when that owner is dead).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pymysql

from tests.support.harness import pid_alive, terminate
from tests.support.mariadb import INSTALL_DB, MARIADBD, DatabaseSettings

PROVIDER = "/usr/lib/galera/libgalera_smm.so"
PREFIX = "galera-"
OWNER_FILE = "owner.pid"
Say = Callable[[str], None]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class NodePorts:
    sql: int = field(default_factory=_free_port)
    gcomm: int = field(default_factory=_free_port)
    ist: int = field(default_factory=_free_port)
    sst: int = field(default_factory=_free_port)


@dataclass
class GaleraNode:
    """One mariadbd with the Galera provider; `name` is what `wsrep_node_name` and logs say."""

    name: str
    base: Path
    ports: NodePorts
    cluster_name: str
    peers: list[str]  # host:gcomm-port of every node, this one included
    process: subprocess.Popen[bytes] | None = None

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def socket(self) -> Path:
        return self.base / "run" / "mysqld.sock"

    @property
    def error_log(self) -> Path:
        return self.base / "run" / "error.log"

    @property
    def tmpdir(self) -> Path:
        """Its own temporary tables, as tests/support/mariadb.py's servers."""
        return self.base / "tmp"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def argv(self, bootstrap: bool) -> list[str]:
        run = self.base / "run"
        provider_options = ";".join([
            f"gmcast.listen_addr=tcp://127.0.0.1:{self.ports.gcomm}",
            f"ist.recv_addr=127.0.0.1:{self.ports.ist}",
            "gcache.size=16M",
            "gcache.page_size=16M",
            # A killed node is declared gone after 5 s (defaults 5/15 s), so the rest keeps quorum quickly.
            "evs.suspect_timeout=PT5S",
            "evs.inactive_timeout=PT10S",
        ])
        user_args = ["--user=mysql"] if os.geteuid() == 0 else []
        return [
            MARIADBD,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--port={self.ports.sql}",
            "--bind-address=127.0.0.1",
            f"--pid-file={run / 'mysqld.pid'}",
            f"--log-error={self.error_log}",
            f"--tmpdir={self.tmpdir}",
            "--skip-name-resolve",
            "--max-connections=500",
            "--character-set-server=utf8mb4",
            "--performance-schema=OFF",
            "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=16M",
            "--innodb-flush-log-at-trx-commit=2",
            "--binlog-format=ROW",
            "--innodb-autoinc-lock-mode=2",
            "--wsrep-on=ON",
            f"--wsrep-provider={PROVIDER}",
            f"--wsrep-cluster-name={self.cluster_name}",
            f"--wsrep-node-name={self.name}",
            f"--wsrep-node-address=127.0.0.1:{self.ports.gcomm}",
            f"--wsrep-sst-receive-address=127.0.0.1:{self.ports.sst}",
            "--wsrep-sst-method=rsync",
            f"--wsrep-provider-options={provider_options}",
            "--wsrep-cluster-address=gcomm://" + ("" if bootstrap else ",".join(self.peers)),
            *(["--wsrep-new-cluster"] if bootstrap else []),
            *user_args,
        ]

    def start(self, bootstrap: bool = False) -> None:
        """Start mariadbd; returns at once (`wait_synced` waits for it to serve)."""
        assert not self.running, f"{self.name} is already running"
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(self.argv(bootstrap), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)

    def kill(self) -> None:
        """SIGKILL, as a host that lost power: no goodbye to the group, the datadir as it was."""
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=60)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (a clean shutdown), SIGKILL after `timeout`."""
        if not self.running:
            return
        assert self.process is not None
        terminate(self.process, timeout)

    def root(self) -> pymysql.connections.Connection:
        return pymysql.connect(unix_socket=str(self.socket), user="root", password="", autocommit=True,
                               connect_timeout=5, read_timeout=30)

    def status(self, *names: str) -> dict[str, str]:
        """`SHOW STATUS` values of this node (wsrep_local_state_comment, wsrep_cluster_size, ...)."""
        with contextlib.closing(self.root()) as conn, conn.cursor() as cursor:
            cursor.execute("SHOW GLOBAL STATUS WHERE Variable_name IN (" + ", ".join(["%s"] * len(names)) + ")",
                           names)
            return {str(k): str(v) for k, v in cursor.fetchall()}

    def synced(self, size: int | None = None) -> bool:
        """Serving: Synced, in the primary component, and (when given) in a cluster of `size` nodes."""
        if not self.running:
            return False
        try:
            values = self.status("wsrep_local_state_comment", "wsrep_cluster_status", "wsrep_cluster_size",
                                 "wsrep_ready")
        except pymysql.err.MySQLError:
            return False
        return (values.get("wsrep_local_state_comment") == "Synced" and values.get("wsrep_ready") == "ON"
                and values.get("wsrep_cluster_status") == "Primary"
                and (size is None or values.get("wsrep_cluster_size") == str(size)))

    def wait_synced(self, timeout: float = 180, size: int | None = None) -> None:
        deadline = time.monotonic() + timeout
        while not self.synced(size):
            if not self.running:
                raise RuntimeError(f"galera node {self.name} exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"galera node {self.name} not synced after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.25)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.error_log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no error log)"


@dataclass
class GaleraCluster:
    """Three nodes (by default); `settings(i)` connects a client to node i, `kill(i)` / `rejoin(i)` are faults."""

    size: int = 3
    say: Say = lambda _text: None
    base: Path | None = None
    nodes: list[GaleraNode] = field(default_factory=list)
    user: str = "scheduler"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    database: str = "scheduler"

    def start(self, timeout: float = 240) -> GaleraCluster:
        """Bootstrap the first node, create the client user and database, then let the others join one by one."""
        reap_stale()
        # As root the servers run as mysql, which must reach the datadirs: /tmp, not a private TMPDIR.
        self.base = Path(tempfile.mkdtemp(prefix=PREFIX, dir="/tmp" if os.geteuid() == 0 else None))
        self.base.chmod(0o755)
        (self.base / OWNER_FILE).write_text(str(os.getpid()))
        ports = [NodePorts() for _ in range(self.size)]
        peers = [f"127.0.0.1:{p.gcomm}" for p in ports]
        name = f"sp-{self.base.name.removeprefix(PREFIX)}"
        try:
            for i, node_ports in enumerate(ports):
                node = GaleraNode(f"node{i + 1}", self.base / f"node{i + 1}", node_ports, name, peers)
                for path in (node.datadir, node.socket.parent, node.tmpdir):
                    path.mkdir(parents=True)
                self.nodes.append(node)
            self._chown_to_mysql()
            self._install(self.nodes[0])
            self.say(f"galera: bootstrapping {self.nodes[0].name} (SQL port {self.nodes[0].ports.sql})")
            self.nodes[0].start(bootstrap=True)
            self.nodes[0].wait_synced(timeout)
            self._create_user()
            for node in self.nodes[1:]:
                self.say(f"galera: {node.name} joins by rsync SST (SQL port {node.ports.sql})")
                node.start()
                node.wait_synced(timeout)
            self.nodes[0].wait_synced(timeout, size=self.size)
        except BaseException:
            self.stop()
            raise
        return self

    def _chown_to_mysql(self) -> None:
        if os.geteuid() != 0:
            return
        mysql = pwd.getpwnam("mysql")
        assert self.base is not None
        for path in self.base.rglob("*"):
            if path.is_dir():
                os.chown(path, mysql.pw_uid, mysql.pw_gid)

    def _install(self, node: GaleraNode) -> None:
        user_args = ["--user=mysql"] if os.geteuid() == 0 else []
        result = subprocess.run(
            [INSTALL_DB, "--no-defaults", f"--datadir={node.datadir}", *user_args,
             "--auth-root-authentication-method=normal", "--skip-test-db", "--innodb-log-file-size=16M"],
            capture_output=True, text=True, timeout=300, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")

    def _create_user(self) -> None:
        with contextlib.closing(self.nodes[0].root()) as conn, conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4")
            cursor.execute(f"CREATE USER '{self.user}'@'127.0.0.1' IDENTIFIED BY %s", (self.password,))
            # A throwaway cluster: the client may create the fresh databases each test needs.
            cursor.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@'127.0.0.1'")

    def settings(self, index: int, database: str | None = None) -> DatabaseSettings:
        """How a client (the scheduler: DB_HOST, DB_PORT, ...) reaches node `index`."""
        node = self.nodes[index]
        return DatabaseSettings("127.0.0.1", node.ports.sql, self.user, self.password, database or self.database,
                                str(node.socket))

    def create_database(self, name: str | None = None) -> str:
        name = name or f"t_{secrets.token_hex(6)}"
        with contextlib.closing(self.any_synced().root()) as conn, conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        return name

    def drop_database(self, name: str) -> None:
        with contextlib.closing(self.any_synced().root()) as conn, conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")

    def any_synced(self) -> GaleraNode:
        for node in self.nodes:
            if node.synced():
                return node
        raise RuntimeError("no galera node is synced")

    def kill(self, index: int) -> None:
        """Crash node `index`; returns once the others have a primary component without it."""
        self.nodes[index].kill()
        rest = [n for i, n in enumerate(self.nodes) if i != index and n.running]
        deadline = time.monotonic() + 60
        while not all(n.synced(size=len(rest)) for n in rest):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not drop {self.nodes[index].name} within 60 s")
            time.sleep(0.25)

    def rejoin(self, index: int, timeout: float = 240) -> None:
        """Start node `index` again with the cluster address of all nodes; returns once it is Synced."""
        node = self.nodes[index]
        node.start()
        node.wait_synced(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> GaleraCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def reap_stale(tmp: Path = Path("/tmp")) -> list[Path]:
    """Stop the servers of harness runs whose owner process is gone, and remove their directories.

    Only processes whose pid file lies in such a directory and whose command line names that directory are
    signalled: nothing another user or checkout started.
    """
    reaped = []
    for base in tmp.glob(f"{PREFIX}*"):
        owner_file = base / OWNER_FILE
        try:
            owner = int(owner_file.read_text())
        except (OSError, ValueError):
            continue
        if pid_alive(owner):
            continue
        for pid_file in base.glob("node*/run/mysqld.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text())
                if str(base) in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)
        reaped.append(base)
    return reaped
