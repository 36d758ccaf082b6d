"""The cluster harness itself: Galera replicates, conflicts across nodes, survives a killed node; namespaces
are separate hosts that can be cut off and come back; nothing is left behind."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pymysql
import pytest
import requests

from tests.support import galera as galera_support
from tests.support import netns
from tests.support.galera import GaleraCluster
from tests.support.netns import LAN, Namespace

DEADLOCK = 1213


@pytest.fixture
def table(galera: GaleraCluster) -> Iterator[str]:
    database = galera.create_database()
    with contextlib.closing(galera.settings(0, database).connect()) as conn, conn.cursor() as cursor:
        cursor.execute("CREATE TABLE job (id INT PRIMARY KEY AUTO_INCREMENT, taken_by VARCHAR(20))")
        cursor.execute("INSERT INTO job (taken_by) VALUES " + ", ".join(["(NULL)"] * 5))
    # On every node before the test begins: a node killed right away may not have applied the CREATE yet, and
    # what a crash loses before it is applied is not what these tests are about (CI: node3 rejoined without it).
    for index in range(len(galera.nodes)):
        with contextlib.closing(galera.settings(index, database).connect()) as conn, conn.cursor() as cursor:
            cursor.execute("SET SESSION wsrep_sync_wait = 1")
            cursor.execute("SELECT COUNT(*) FROM job")
            assert cursor.fetchone() == (5,)
    try:
        yield database
    finally:
        galera.drop_database(database)


def test_galera_replicates_through_every_node(galera: GaleraCluster, table: str) -> None:
    for index in range(3):
        assert galera.nodes[index].synced(size=3)
        with contextlib.closing(galera.settings(index, table).connect()) as conn, conn.cursor() as cursor:
            cursor.execute("SET SESSION wsrep_sync_wait = 1")
            cursor.execute("SELECT COUNT(*) FROM job")
            assert cursor.fetchone() == (5,)


def test_skip_locked_is_local_and_the_loser_fails_certification(galera: GaleraCluster, table: str) -> None:
    """Why the scheduler must retry on Galera: a row locked on node1 is not locked on node2, so both claim it;
    the second commit is refused with a deadlock error (certification failure), and only the first claim stands."""
    first = galera.settings(0, table).connect()
    second = galera.settings(1, table).connect()
    claim = "SELECT id FROM job WHERE taken_by IS NULL ORDER BY id LIMIT 3 FOR UPDATE SKIP LOCKED"
    try:
        first.autocommit(False)
        second.autocommit(False)
        with first.cursor() as a, second.cursor() as b:
            a.execute(claim)
            ids_first = [row[0] for row in a.fetchall()]
            b.execute(claim)
            ids_second = [row[0] for row in b.fetchall()]
            assert ids_first == ids_second and len(ids_first) == 3, "SKIP LOCKED skipped rows locked on another node"
            a.execute("UPDATE job SET taken_by = 'first' WHERE id IN %s", (ids_first,))
            first.commit()
            with pytest.raises(pymysql.err.OperationalError) as refused:
                # Either the update (aborted by the applier) or the commit (certification) is refused.
                b.execute("UPDATE job SET taken_by = 'second' WHERE id IN %s", (ids_second,))
                second.commit()
            assert refused.value.args[0] == DEADLOCK
            second.rollback()
    finally:
        first.close()
        second.close()
    with contextlib.closing(galera.settings(2, table).connect()) as conn, conn.cursor() as cursor:
        cursor.execute("SET SESSION wsrep_sync_wait = 1")
        cursor.execute("SELECT taken_by, COUNT(*) FROM job GROUP BY taken_by ORDER BY taken_by")
        assert cursor.fetchall() == ((None, 2), ("first", 3))


def test_a_killed_node_rejoins_and_catches_up(galera: GaleraCluster, table: str) -> None:
    galera.kill(2)
    assert galera.nodes[0].synced(size=2)
    with contextlib.closing(galera.settings(0, table).connect()) as conn, conn.cursor() as cursor:
        cursor.execute("INSERT INTO job (taken_by) VALUES ('while node3 was down')")
    galera.rejoin(2)
    assert galera.nodes[0].synced(size=3)
    with contextlib.closing(galera.settings(2, table).connect()) as conn, conn.cursor() as cursor:
        cursor.execute("SET SESSION wsrep_sync_wait = 1")
        cursor.execute("SELECT COUNT(*) FROM job WHERE taken_by = 'while node3 was down'")
        assert cursor.fetchone() == (1,)


# --- network namespaces ---------------------------------------------------------------------------------

def _serve_in(ns: Namespace, port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(ns.command([sys.executable, "-m", "http.server", str(port), "--bind", ns.address]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
    deadline = time.monotonic() + 60
    while not _answers(f"http://{ns.address}:{port}/"):
        assert server.poll() is None, "the server in the namespace exited"
        assert time.monotonic() < deadline, "the server in the namespace did not answer within 60 s"
        time.sleep(0.2)
    return server


def _answers(url: str, timeout: float = 2) -> bool:
    try:
        return requests.get(url, timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def test_a_namespace_is_a_host_that_can_be_cut_off(lan: LAN) -> None:
    host, other = lan.add(), lan.add()
    assert (host.address, other.address) == (f"10.213.{lan.subnet}.11", f"10.213.{lan.subnet}.12")
    assert netns.namespace_of(os.getpid()) is None
    server = _serve_in(host, 18088)
    try:
        url = f"http://{host.address}:18088/"
        # The host reaches the LAN side (the gateway) and only has its own interfaces.
        links = subprocess.run(host.command(["ip", "-o", "link"]), capture_output=True, text=True, check=True).stdout
        assert sorted(line.split(": ")[1].split("@")[0] for line in links.splitlines()) == ["eth0", "lo"]
        assert netns.namespace_of(server.pid) == host.name
        host.cut()
        assert host.is_cut
        with pytest.raises(requests.ConnectTimeout):
            requests.get(url, timeout=2)
        assert _answers(f"http://{other.address}:18088/") is False  # the other host has no server: refused, not cut
        host.restore()
        assert not host.is_cut
        deadline = time.monotonic() + 30
        while not _answers(url):
            assert time.monotonic() < deadline, "the host did not come back after restore()"
            time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_remove_leaves_nothing_and_stale_runs_are_reaped() -> None:
    lan = LAN().create()
    names = [lan.add().name for _ in range(2)]
    bridge = lan.bridge
    lan.remove()
    assert not set(names) & set(os.listdir(netns.NETNS_DIR))
    assert subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0

    # A harness run killed outright: its owner pid is gone, its namespace and bridge are still there.
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale_ns, stale_bridge = f"spc-dead-{gone.pid}-1", "spcdeadbr"
    netns.ip("netns", "add", stale_ns)
    netns.ip("link", "add", stale_bridge, "type", "bridge")
    netns.ip("link", "set", "dev", stale_bridge, "alias", f"{netns.OWNER_ALIAS}{gone.pid}")
    try:
        reaped = netns.reap_stale()
        assert stale_ns in reaped and stale_bridge in reaped
    finally:
        netns.ip("netns", "del", stale_ns, check=False)
        netns.ip("link", "del", stale_bridge, check=False)


def test_galera_servers_of_a_killed_run_are_reaped(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.mktemp("reap")
    stale = base / f"{galera_support.PREFIX}stale"
    (stale / "node1" / "run").mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    (stale / galera_support.OWNER_FILE).write_text(str(gone.pid))
    # A "server" whose command line names the directory, as mariadbd's --datadir does.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(300)",
                                str(stale)], stdout=subprocess.PIPE, text=True)
    # Until it has exec'd, the child's command line is still pytest's and the reaper rightly spares it.
    assert sleeper.stdout is not None and sleeper.stdout.readline() == "up\n"
    (stale / "node1" / "run" / "mysqld.pid").write_text(str(sleeper.pid))
    live = base / f"{galera_support.PREFIX}live"
    live.mkdir()
    (live / galera_support.OWNER_FILE).write_text(str(os.getpid()))
    try:
        assert galera_support.reap_stale(base) == [stale]
        assert sleeper.wait(timeout=10) == -9
        assert not stale.exists() and live.exists()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        sleeper.stdout.close()
