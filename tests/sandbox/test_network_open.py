"""The open network (PYTHON_RUNNER_NETWORK=open, the default) with real runners, real clients and real servers.

Runners get a slirp4netns interface and an nftables table written from outside the runner. "The internet" is
the network lab (tests.support.netlab): a namespace on this machine holding a globally routable address and a
private one, with DNS, HTTPS, HTTP, UDP echo and SMTP servers that report every contact. Refusals are proven
against listening servers (a refused probe would otherwise have reached them), and every probe of an address
outside the lab happens only after a probe of the lab's private address was refused, so no packet can leave
this machine even if the rules were missing. The host's own services (loopback, this host's addresses, the
sandbox and scheduler ports) are real listeners on this host.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from tests.seatable_stub.server import StubServer
from tests.support.metrics import value
from tests.support.netlab import NetLab
from tests.support.podman import CallbackReceiver, SandboxProcess

# Each probe prints one line: name, then connected / refused <errno> / error <text> / the answer.
PROBES = """
import errno, json, os, smtplib, socket, ssl, sys, urllib.request
import requests
def tcp(name, host, port, family=socket.AF_INET):
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect((host, port))
            print(name, 'connected')
            return True
    except OSError as e:
        print(name, 'refused', errno.errorcode.get(e.errno, e.errno))
        return False
def udp(name, host, port):
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(b'ping', (host, port))
            print(name, s.recv(100).decode())
    except OSError as e:
        print(name, 'refused', errno.errorcode.get(e.errno, e.errno))
def resolve(name, host):
    try:
        print(name, sorted({i[4][0] for i in socket.getaddrinfo(host, 80, socket.AF_INET)}))
    except socket.gaierror as e:
        print(name, 'gaierror', e.errno)
"""


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP server on every address of this host (loopback and the rest): what a runner must never reach."""
    server = socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    hits: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            hits.append(peer[0])
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join()
    server.close()
    assert hits == [], f"a runner reached this host: {hits}"


def host_address() -> str:
    """A non-loopback IPv4 address of this host (the runners' slirp4netns connects from here)."""
    for addresses in psutil.net_if_addrs().values():
        for entry in addresses:
            if entry.family == socket.AF_INET and not entry.address.startswith("127."):
                return str(entry.address)
    raise AssertionError("this host has no non-loopback IPv4 address")


def run(sandbox: SandboxProcess, receiver: CallbackReceiver, script_id: int, script: str,
        env: dict[str, str] | None = None) -> list[str]:
    assert sandbox.run(script_id, script, env=env or {}).status_code == 202
    output: str = receiver.result(script_id, timeout=120)["output"]
    return output.splitlines()


def open_sandbox(sandbox_factory: Any, lab: NetLab, tls: tuple[str, str], pool: str, **extra: str) -> SandboxProcess:
    proc: SandboxProcess = sandbox_factory(
        PYTHON_RUNNER_NETWORK="open", PYTHON_RUNNER_DNS=lab.public, PYTHON_RUNNER_CA_BUNDLE=tls[0],
        PYTHON_RUNNER_EGRESS_ALLOW=f"{lab.private}:2525", PYTHON_SANDBOX_WARM_POOL=pool,
        PYTHON_PROCESS_TIMEOUT="30", **extra)
    return proc


@pytest.mark.parametrize("pool", ["0", "1"], ids=["cold", "warm"])
def test_internet_yes_internal_no(sandbox_factory: Any, receiver: CallbackReceiver, netlab: NetLab,
                                  lab_tls: tuple[str, str], host_listener: int, pool: str) -> None:
    """Real clients: HTTPS with requests, DNS, UDP, smtplib to a listed private server; every internal
    destination refused, each with its line in the run's output and counted in /health."""
    sandbox = open_sandbox(sandbox_factory, netlab, lab_tls, pool)
    lab, me = netlab, host_address()
    before = len(netlab.drain())
    netlab.assert_local(lab.public, lab.private)
    script = PROBES + f"""
if tcp('private', '{lab.private}', 8080):
    sys.exit('the rules are missing: stopping before any other probe')
resolve('dns', 'internet.lab.test')
print('https', requests.get('https://internet.lab.test:8443/hello', timeout=10).text.strip())
udp('udp', '{lab.public}', 5353)
tcp('public-tcp', '{lab.public}', 8080)
with smtplib.SMTP('{lab.private}', 2525, timeout=10) as mail:
    mail.sendmail('script@lab.test', ['ops@lab.test'], 'Subject: from a runner\\n\\nhello by smtplib')
    print('smtp sent')
resolve('dns-internal', 'internal.lab.test')
tcp('by-name', 'internal.lab.test', 8080)
udp('private-udp', '{lab.private}', 5353)
tcp('metadata', '169.254.169.254', 80)
tcp('metadata-mapped', '::ffff:169.254.169.254', 80, socket.AF_INET6)
tcp('metadata-v6', 'fd00:ec2::254', 80, socket.AF_INET6)
udp('metadata-udp', '169.254.169.254', 53)
tcp('host-loopback', '10.0.2.2', {host_listener})
tcp('host-address', '{me}', {host_listener})
tcp('sandbox-port', '{me}', {sandbox.port})
tcp('own-loopback', '127.0.0.1', {host_listener})
print('resolv.conf', open('/etc/resolv.conf').read().split())
"""
    lines = run(sandbox, receiver, 1401, script)
    assert all(" " in line for line in lines), lines
    probes = dict(line.split(" ", 1) for line in lines if not line.startswith("["))
    report = [line for line in lines if line.startswith("[")]
    assert probes.get("private") == "refused ECONNREFUSED", lines
    assert probes["dns"] == f"['{lab.public}']"
    assert probes["https"] == f"hello from {lab.public}"
    assert probes["udp"] == "echo:ping"
    assert probes["public-tcp"] == "connected"
    assert probes["smtp"] == "sent"
    assert probes["dns-internal"] == f"['{lab.private}']"  # the name resolves ...
    assert probes["by-name"] == "refused ECONNREFUSED"  # ... and the address it resolved to is refused
    assert probes["private-udp"] == "refused EPERM"
    assert probes["metadata"] == "refused ECONNREFUSED"
    assert probes["metadata-mapped"] == "refused ECONNREFUSED"  # an IPv4 packet on the wire: the same check
    assert probes["metadata-v6"] == "refused ECONNREFUSED"
    assert probes["metadata-udp"] == "refused EPERM"
    assert probes["host-loopback"] == "refused ECONNREFUSED"
    assert probes["host-address"] == "refused ECONNREFUSED"
    assert probes["sandbox-port"] == "refused ECONNREFUSED"
    assert probes["own-loopback"] == "refused ECONNREFUSED"  # the runner's own loopback: nothing listens
    assert probes["resolv.conf"] == f"['nameserver', '{lab.public}']"
    assert sorted(report) == sorted([
        f"[egress refused: {lab.private}:8080 (private address) (2 times)]",
        f"[egress refused: {lab.private}:5353/udp (private address)]",
        "[egress refused: 169.254.169.254:80 (link-local address) (2 times)]",
        "[egress refused: [fd00:ec2::254]:80 (private address)]",
        "[egress refused: 169.254.169.254:53/udp (link-local address)]",
        f"[egress refused: 10.0.2.2:{host_listener} (this host's loopback)]",
        f"[egress refused: {me}:{host_listener} (address of this host)]",
        f"[egress refused: {me}:{sandbox.port} (sandbox or scheduler port)]",
    ]), report
    mail = netlab.wait_event(lambda e: e.get("event") == "smtp")
    assert mail["address"] == lab.private and mail["rcpt"] == ["ops@lab.test"]
    assert "hello by smtplib" in mail["data"]
    contacts = [e for e in netlab.drain()[before:] if e.get("event") in ("http", "udp") and e["address"] == lab.private]
    assert contacts == [], f"a refused destination was reached: {contacts}"
    egress = sandbox.health()["egress"]
    assert egress["mode"] == "open" and egress["refused"] == 10 and egress["destinations_refused"] == 8, egress
    metrics = requests.get(sandbox.url + "/metrics", headers={"Authorization": f"Bearer {sandbox.token}"},
                           timeout=10).text
    assert value(metrics, "seatable_sandbox_network_refused_connections_total") == 10
    assert value(metrics, "seatable_sandbox_runner_network", mode="open") == 1
    assert value(metrics, "seatable_sandbox_network_setup_failures_total") == 0


BASE_SCRIPT = """
from seatable_api import Base, context
base = Base(context.api_token, context.server_url)
base.auth()
base.append_row('Table1', {'Name': 'from an open runner'})
print('rows', [r['Name'] for r in base.list_rows('Table1')])
"""


def test_the_runs_seatable_server_on_this_host_is_reached_by_that_run_only(
        sandbox_factory: Any, receiver: CallbackReceiver, netlab: NetLab) -> None:
    """A SeaTable server on one of this host's addresses (refused by default) is added to a warm runner's
    table when its job arrives; the next run, for another server, cannot reach it."""
    sandbox = sandbox_factory(PYTHON_RUNNER_NETWORK="open", PYTHON_SANDBOX_WARM_POOL="1", PYTHON_PROCESS_TIMEOUT="30")
    with StubServer(host=netlab.host_side) as stub:
        base = stub.seatable.add_base(tables=("Table1",))
        stub.seatable.add_script(base.uuid, "open.py", "print(1)")
        token = stub.seatable.issue_task_file(base.uuid, "open.py", stub.url).temp_api_token
        lines = run(sandbox, receiver, 1402, BASE_SCRIPT, {"dtable_web_url": stub.url, "api_token": token})
        assert lines == ["rows ['from an open runner']"], lines
        assert [r["Name"] for r in base.tables["Table1"].select(limit=10)] == ["from an open runner"]
        other = PROBES + f"tcp('stub', '{netlab.host_side}', {stub.port})\n"
        lines = run(sandbox, receiver, 1403, other, {"dtable_web_url": "https://cloud.seatable.io"})
        assert lines == ["stub refused ECONNREFUSED",
                         f"[egress refused: {netlab.host_side}:{stub.port} (address of this host)]"], lines


def test_default_resolver_is_slirp4netns_and_no_other_dns(sandbox_factory: Any, receiver: CallbackReceiver,
                                                          netlab: NetLab) -> None:
    """Without PYTHON_RUNNER_DNS the runner asks slirp4netns's forwarder (this host's resolvers answer);
    DNS to any other server, even on a public address, is refused so an admin's resolver cannot be bypassed."""
    sandbox = sandbox_factory(PYTHON_RUNNER_NETWORK="open", PYTHON_PROCESS_TIMEOUT="30")
    netlab.assert_local(netlab.public)
    before = len(netlab.drain())
    script = PROBES + f"""
if tcp('private', '{netlab.private}', 8080):
    sys.exit('the rules are missing')
print('resolv.conf', open('/etc/resolv.conf').read().split())
resolve('host-resolver', 'internet.lab.test')
udp('other-dns', '{netlab.public}', 53)
tcp('other-dns-tcp', '{netlab.public}', 53)
"""
    lines = run(sandbox, receiver, 1404, script)
    assert lines[:5] == [
        "private refused ECONNREFUSED",
        "resolv.conf ['nameserver', '10.0.2.3']",
        "host-resolver gaierror -2",  # EAI_NONAME: this host's resolver answered (blocked would be EAI_AGAIN)
        "other-dns refused EPERM",
        "other-dns-tcp refused ECONNREFUSED",
    ], lines
    assert sorted(lines[5:]) == sorted([
        f"[egress refused: {netlab.private}:8080 (private address)]",
        f"[egress refused: {netlab.public}:53/udp (DNS server other than the runner's resolver)]",
        f"[egress refused: {netlab.public}:53 (DNS server other than the runner's resolver)]",
    ]), lines
    assert not [e for e in netlab.drain()[before:] if e.get("event") == "dns"], "a refused DNS query reached the lab"


def test_one_runner_cannot_reach_another(sandbox_factory: Any, receiver: CallbackReceiver,
                                         host_listener: int) -> None:
    """Each runner has its own namespace behind its own slirp4netns: another runner's listener is not an
    address anyone can reach (10.0.2.100 is every runner's own address), and the host in between refuses."""
    sandbox = sandbox_factory(PYTHON_RUNNER_NETWORK="open", PYTHON_STARTER_THREAD_COUNT="2",
                              PYTHON_PROCESS_TIMEOUT="30")
    listener = f"""
import socket, time
server = socket.create_server(('0.0.0.0', {host_listener}))
server.settimeout(8)
print('listening', flush=True)
try:
    conn, peer = server.accept()
    print('reached by', peer)
except OSError:
    print('nobody came')
"""
    assert sandbox.run(1405, listener).status_code == 202
    prober = PROBES + f"""
import time
time.sleep(1)
tcp('slirp-address', '10.0.2.100', {host_listener})
tcp('host-loopback', '10.0.2.2', {host_listener})
tcp('host-address', '{host_address()}', {host_listener})
"""
    lines = run(sandbox, receiver, 1406, prober)
    assert lines[:3] == ["slirp-address refused ECONNREFUSED",  # its own address: nothing listens there
                         "host-loopback refused ECONNREFUSED", "host-address refused ECONNREFUSED"], lines
    assert receiver.result(1405, timeout=60)["output"] == "listening\nnobody came\n"


def helper_pids(sandbox: SandboxProcess) -> list[int]:
    worker = sandbox.worker_pid()
    children = Path(f"/proc/{worker}/task/{worker}/children").read_text().split()
    return [int(pid) for pid in children if b"netguard_helper" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_rules_outlive_a_killed_helper(sandbox_factory: Any, receiver: CallbackReceiver, netlab: NetLab) -> None:
    """Fault injection: the netguard helper is killed while a warm runner waits. The runner's rules live in
    its namespace, so they still hold; the restarted helper adopts the runner (same namespace, checked by
    inode), and the run's report is complete."""
    sandbox = sandbox_factory(PYTHON_RUNNER_NETWORK="open", PYTHON_SANDBOX_WARM_POOL="1", PYTHON_PROCESS_TIMEOUT="30")
    [helper] = helper_pids(sandbox)
    os.kill(helper, signal.SIGKILL)
    script = PROBES + f"tcp('private', '{netlab.private}', 8080)\n"
    lines = run(sandbox, receiver, 1407, script)
    assert lines == ["private refused ECONNREFUSED",
                     f"[egress refused: {netlab.private}:8080 (private address)]"], lines
    assert helper_pids(sandbox) != [helper]
    egress = sandbox.health()["egress"]
    assert egress["adopted"] == 1 and egress["refused"] == 1, egress
    lines = run(sandbox, receiver, 1408, script)  # the next runner was set up by the new helper
    assert lines[0] == "private refused ECONNREFUSED", lines
