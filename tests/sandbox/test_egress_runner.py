"""Egress from real runners in the none and seatable modes, rootless Podman (the open mode: test_network_open).

The runner's one way out is the sandbox's per-run Unix socket; these tests run user scripts that try
every other way (direct sockets, UDP, DNS, the proxy to unlisted or special addresses) and the real
seatable_api client against the SeaTable stand-in over HTTP and HTTPS.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.seatable_stub.server import StubServer
from tests.support.podman import CallbackReceiver, SandboxProcess

BASE_SCRIPT = """
from seatable_api import Base, context
base = Base(context.api_token, context.server_url)
base.auth()
base.append_row('Table1', {'Name': 'from the runner'})
print('rows', [r['Name'] for r in base.list_rows('Table1')])
"""

# Every other way out a script might try; each prints one line the test checks.
PROBES = """
import os, socket, requests
def get(name, url):
    try:
        r = requests.get(url, timeout=10)
        print(name, r.status_code, r.headers.get('X-Egress-Refused', ''))
    except requests.RequestException as e:
        print(name, 'error', type(e).__name__)
def direct(name, family, kind, address, proto=0):
    try:
        with socket.socket(family, kind, proto) as s:
            s.settimeout(3)
            if kind == socket.SOCK_DGRAM:
                s.sendto(b'exfiltrate', address); print(name, 'sent')
            else:
                s.connect(address); print(name, 'connected')
    except OSError as e:
        print(name, 'blocked', e.errno)
"""


@pytest.fixture(scope="module")
def tls_files() -> Iterator[tuple[str, str]]:
    """A self-signed certificate for 127.0.0.1, readable by the sandbox user (it is the admin's CA file)."""
    path = Path(tempfile.mkdtemp(prefix="egress-ca-"))
    path.chmod(0o755)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(path / "key.pem"), "-out", str(path / "cert.pem"), "-subj", "/CN=seatable.test",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    (path / "cert.pem").chmod(0o644)
    yield str(path / "cert.pem"), str(path / "key.pem")
    shutil.rmtree(path)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        server.seatable.add_base(tables=("Table1",))
        yield server


@pytest.fixture
def other() -> Iterator[StubServer]:
    """A second local HTTP server, not on any allow list."""
    with StubServer() as server:
        yield server


def token_for(stub: StubServer) -> str:
    base = stub.seatable.all_bases()[0]
    stub.seatable.add_script(base.uuid, "egress.py", "print(1)")
    return stub.seatable.issue_task_file(base.uuid, "egress.py", stub.url).temp_api_token


def run(sandbox: SandboxProcess, receiver: CallbackReceiver, script_id: int, script: str,
        env: dict[str, str]) -> list[str]:
    assert sandbox.run(script_id, script, env=env).status_code == 202
    output: str = receiver.result(script_id, timeout=120)["output"]
    return output.splitlines()


def test_none_mode_reaches_nothing(sandbox_factory: Any, receiver: CallbackReceiver, stub: StubServer) -> None:
    sandbox = sandbox_factory(PYTHON_RUNNER_NETWORK="none")
    script = PROBES + f"""
print('proxy', os.environ.get('HTTPS_PROXY'), os.path.exists('/run/egress'))
get('seatable', '{stub.url}/api/v2.1/dtable/app-access-token/')
direct('tcp', socket.AF_INET, socket.SOCK_STREAM, ('127.0.0.1', {stub.port}))
direct('udp', socket.AF_INET, socket.SOCK_DGRAM, ('8.8.8.8', 53))
"""
    lines = run(sandbox, receiver, 901, script, {"dtable_web_url": stub.url, "api_token": token_for(stub)})
    assert lines[0] == "proxy None False"
    assert lines[1] == "seatable error ConnectionError"
    assert lines[2] == "tcp blocked 111"  # ECONNREFUSED: only the runner's own loopback exists
    assert lines[3] == "udp blocked 101"  # ENETUNREACH
    assert len(lines) == 4, lines  # and no egress report: there is no proxy to refuse anything
    assert sandbox.health()["egress"] == {"mode": "none", "allow": []}


@pytest.mark.parametrize("pool", ["0", "2"], ids=["cold", "warm"])
def test_seatable_mode_reaches_its_server_and_nothing_else(
        sandbox_factory: Any, receiver: CallbackReceiver, stub: StubServer, other: StubServer, pool: str) -> None:
    """The proxy mode: seatable_api works; every other destination is refused and reported."""
    sandbox = sandbox_factory(PYTHON_RUNNER_NETWORK="seatable", PYTHON_SANDBOX_WARM_POOL=pool)
    host = socket.gethostname()
    script = BASE_SCRIPT + PROBES + f"""
get('sandbox', 'http://127.0.0.1:{sandbox.port}/ping/')
get('scheduler', 'http://127.0.0.1:{receiver.port}/')
get('other', '{other.url}/')
get('metadata', 'http://169.254.169.254/latest/meta-data/')
get('hostname', 'http://{host}:{stub.port}/')
get('https', 'https://127.0.0.1:{other.port}/')
direct('tcp', socket.AF_INET, socket.SOCK_STREAM, ('127.0.0.1', {stub.port}))
direct('tcp6', socket.AF_INET6, socket.SOCK_STREAM, ('::1', {stub.port}))
direct('metadata-tcp', socket.AF_INET, socket.SOCK_STREAM, ('169.254.169.254', 80))
direct('udp', socket.AF_INET, socket.SOCK_DGRAM, ('8.8.8.8', 53))
direct('raw', socket.AF_INET, socket.SOCK_RAW, ('8.8.8.8', 0), socket.IPPROTO_ICMP)
try:
    socket.getaddrinfo('exfil.example.com', 80); print('dns resolved')
except OSError as e:
    print('dns failed')
print('files', open('/etc/resolv.conf').read().count('nameserver'), os.access('/etc/hosts', os.W_OK))
"""
    lines = run(sandbox, receiver, 902, script, {"dtable_web_url": stub.url, "api_token": token_for(stub)})
    assert lines[0] == "rows ['from the runner']", lines
    base = stub.seatable.all_bases()[0]
    assert [r["Name"] for r in base.tables["Table1"].select(limit=10)] == ["from the runner"]
    probes = dict(line.split(" ", 1) for line in lines[1:14])
    assert probes["sandbox"] == "403 not on the allow list"
    assert probes["scheduler"] == "403 not on the allow list"
    assert probes["other"] == "403 not on the allow list"
    assert probes["metadata"] == "403 not on the allow list"  # refused before any lookup or packet
    assert probes["hostname"] == "403 not on the allow list"  # same port, but another name: not listed
    assert probes["https"] == "error ProxyError"  # CONNECT to an unlisted port is refused too
    assert probes["tcp"] == "blocked 111"
    assert probes["tcp6"] in ("blocked 111", "blocked 99", "blocked 97")  # refused, or no IPv6 at all
    assert probes["metadata-tcp"] == "blocked 101"
    assert probes["udp"] == "blocked 101"
    assert probes["raw"] == "blocked 1"  # EPERM: no CAP_NET_RAW
    assert probes["dns"] == "failed"
    assert probes["files"] == "0 False"
    report = lines[14:]
    assert report == [  # one line per destination, repeats counted
        f"[egress refused: 127.0.0.1:{sandbox.port} (not on the allow list)]",
        f"[egress refused: 127.0.0.1:{receiver.port} (not on the allow list)]",
        f"[egress refused: 127.0.0.1:{other.port} (not on the allow list) (2 times)]",
        "[egress refused: 169.254.169.254:80 (not on the allow list)]",
        f"[egress refused: {host}:{stub.port} (not on the allow list)]",
    ], report
    health = sandbox.health()["egress"]
    assert health["mode"] == "seatable" and health["refused"] == 6 and health["allowed"] >= 3, health


def test_https_with_the_admins_ca(sandbox_factory: Any, receiver: CallbackReceiver,
                                  tls_files: tuple[str, str]) -> None:
    """seatable_api over HTTPS to a server whose certificate only PYTHON_RUNNER_CA_BUNDLE vouches for."""
    sandbox = sandbox_factory(PYTHON_RUNNER_NETWORK="seatable", PYTHON_RUNNER_CA_BUNDLE=tls_files[0],
                              PYTHON_SANDBOX_WARM_POOL="1")
    with StubServer(tls=tls_files) as stub:
        stub.seatable.add_base(tables=("Table1",))
        assert stub.url.startswith("https://127.0.0.1:")
        script = BASE_SCRIPT + """
import os, requests
print('bundle', os.environ['REQUESTS_CA_BUNDLE'] == os.environ['SSL_CERT_FILE'])
try:
    requests.get(context.server_url, verify='/etc/ssl/certs/ca-certificates.crt', timeout=10)
except requests.exceptions.SSLError:
    print('system store alone: untrusted')
"""
        lines = run(sandbox, receiver, 904, script, {"dtable_web_url": stub.url, "api_token": token_for(stub)})
        assert lines == ["rows ['from the runner']", "bundle True", "system store alone: untrusted"], lines
        calls = stub.seatable.all_bases()[0].calls
        assert calls, "the stub saw no API call"


def test_bad_egress_settings_stop_the_sandbox_with_one_line(tmp_path: Path) -> None:
    from sandbox.config import SandboxConfig

    base = {"PYTHON_SANDBOX_AUTH_TOKEN": "a"}
    for env, message in [
        ({"PYTHON_RUNNER_NETWORK": "my net"}, "PYTHON_RUNNER_NETWORK='my net': use one of none, seatable, open"),
        ({"PYTHON_RUNNER_DNS": "10.0.0.53,dns.example"}, "PYTHON_RUNNER_DNS: 'dns.example' is not an IP address"),
        ({"PYTHON_RUNNER_EGRESS_ALLOW": "ftp://x"}, "egress allow entry 'ftp://x': need an http(s) URL"),
        ({"PYTHON_RUNNER_CA_BUNDLE": str(tmp_path / "none.pem")}, "cannot read it"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            SandboxConfig.from_env({**base, **env})
    pem = tmp_path / "not.pem"
    pem.write_text("hello\n")
    os.chmod(pem, 0o644)
    with pytest.raises(ValueError, match="not a PEM certificate bundle"):
        SandboxConfig.from_env({**base, "PYTHON_RUNNER_CA_BUNDLE": str(pem)})
