"""The egress proxy and the runner's forwarder over real sockets (no containers, no mocks).

Network rule: nothing here sends a packet anywhere but 127.0.0.0/8. Names resolve through a
fake resolver, and every upstream connection the proxy makes goes through a guard that refuses
any non-loopback address without touching the network (and the fixture fails the test if the
proxy ever asked for one): refusals are proven before any connection attempt.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

from sandbox import egress_policy as ep
from sandbox.egress import EgressPolicy, EgressProxy, connect_address, parse_request

ROOT = Path(__file__).resolve().parents[2]
BIG = 50 * 1024 * 1024
BLOCK = b"x" * (1024 * 1024)


def load_forwarder() -> ModuleType:
    """runner-rootfs is not an importable package in the source tree; load the file itself."""
    spec = importlib.util.spec_from_file_location("egress_forward", ROOT / "runner-rootfs" / "egress_forward.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


forward = load_forwarder()


class FakeResolver:
    """Names this test invents; never a real lookup."""

    def __init__(self, names: dict[str, list[str]] | None = None) -> None:
        self.names = names or {}
        self.calls: list[str] = []

    def __call__(self, host: str, port: int, family: int = 0, type: int = 0, proto: int = 0,
                 flags: int = 0) -> list[tuple[Any, ...]]:
        self.calls.append(host)
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
                for ip in self.names[host]]


class GuardedConnector:
    """Records what the proxy connects to; refuses anything but loopback without sending a packet."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.violations: list[str] = []

    def __call__(self, ip: Any, port: int, timeout: float) -> socket.socket:
        self.calls.append((str(ip), port))
        if not ip.is_loopback:
            self.violations.append(f"{ip}:{port}")
            raise ConnectionRefusedError("test guard: only loopback")
        return connect_address(ip, port, timeout)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def do_GET(self) -> None:
        self.server.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        if self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(BIG))
            self.end_headers()
            for _ in range(BIG // len(BLOCK)):
                self.wfile.write(BLOCK)
            return
        self.reply(f"hello from {self.server.name}".encode())

    def do_POST(self) -> None:
        self.server.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        self.reply(b"echo:" + self.rfile.read(int(self.headers["Content-Length"])))

    def reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str, tls: Path | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.name = name
        self.seen: list[tuple[str, dict[str, str]]] = []
        if tls is not None:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls / "cert.pem", tls / "key.pem")
            self.socket = context.wrap_socket(self.socket, server_side=True)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture(scope="module")
def tls_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="egress-tls-"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(path / "key.pem"), "-out", str(path / "cert.pem"), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def servers(tls_dir: Path) -> Iterator[dict[str, Server]]:
    found = {"allowed": Server("allowed"), "other": Server("other"), "tls": Server("tls", tls_dir)}
    yield found
    for server in found.values():
        server.shutdown()
        server.server_close()


class Env:
    """A proxy with a short base dir (sun_path is 108 bytes), a fake resolver and the connect guard."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="egr-", dir="/tmp"))
        self.resolver = FakeResolver({"localhost": ["127.0.0.1"]})
        self.connector = GuardedConnector()
        self.proxy = EgressProxy(self.base / "runs", resolver=self.resolver, connector=self.connector)

    def run(self, mode: str = "seatable", *allow: str, key: str = "run-1") -> Path:
        path = self.proxy.open(key)
        self.proxy.arm(key, EgressPolicy(mode, allow))
        return path

    def forwarder(self, run_dir: Path) -> dict[str, str]:
        """The runner's forwarder, in-process on a free port; `proxies=` for requests."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        forward.start(str(run_dir / "proxy.sock"), port)
        url = forward.proxy_env(port)["HTTPS_PROXY"]
        return {"http": url, "https": url}


@pytest.fixture
def env() -> Iterator[Env]:
    made = Env()
    yield made
    made.proxy.shutdown()
    shutil.rmtree(made.base)
    assert made.connector.violations == [], "the proxy tried to reach a non-loopback address"


def raw(run_dir: Path | str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request straight into the proxy socket, as the forwarder would relay it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(Path(run_dir) / "proxy.sock") if isinstance(run_dir, Path) else run_dir)
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers, body


def connect_status(run_dir: Path, target: str) -> tuple[int, str]:
    status, headers, _ = raw(run_dir, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    return status, headers.get("X-Egress-Refused", "")


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # only the proxies each call names
    return s


def test_allowed_http_and_https_through_forwarder(env: Env, servers: dict[str, Server], tls_dir: Path) -> None:
    a, t = servers["allowed"], servers["tls"]
    proxies = env.forwarder(env.run("seatable", f"127.0.0.1:{a.port}", f"127.0.0.1:{t.port}"))
    s = session()
    for _ in range(3):  # requests reuses proxy connections for plain HTTP unless told to close
        r = s.get(f"http://127.0.0.1:{a.port}/hello?x=1", proxies=proxies, headers={"Proxy-Authorization": "x"})
        assert (r.status_code, r.text) == (200, "hello from allowed")
    path, headers = a.seen[-1]
    assert path == "/hello?x=1"  # origin form
    assert headers["host"] == f"127.0.0.1:{a.port}" and headers["connection"] == "close"
    assert not any(name.startswith("proxy-") for name in headers)
    r = s.post(f"http://127.0.0.1:{a.port}/echo", data=b"y" * 300_000, proxies=proxies)
    assert r.text == "echo:" + "y" * 300_000
    r = s.get(f"https://127.0.0.1:{t.port}/hello", proxies=proxies, verify=str(tls_dir / "cert.pem"))
    assert (r.status_code, r.text) == (200, "hello from tls")
    report = env.proxy.close("run-1")
    assert report.refused == [] and report.failed == [] and report.allowed == 5
    assert report.bytes_up > 300_000 and report.bytes_down > 0


def test_seatable_mode_refuses_unlisted_destinations_before_any_connect(env: Env, servers: dict[str, Server],
                                                                        tls_dir: Path) -> None:
    a, other = servers["allowed"], servers["other"]
    run_dir = env.run("seatable", f"127.0.0.1:{a.port}")
    seen_before = len(other.seen)
    for target in (f"127.0.0.1:{other.port}", f"127.0.0.1:{servers['tls'].port}", "169.254.169.254:80",
                   "10.1.2.3:443", "evil.test:443", f"[::1]:{a.port}", f"localhost:{a.port}"):
        assert connect_status(run_dir, target) == (403, ep.NOT_ALLOWED), target
    status, headers, body = raw(run_dir, f"GET http://127.0.0.1:{other.port}/ HTTP/1.1\r\n\r\n".encode())
    assert status == 403 and headers["X-Egress-Refused"] == ep.NOT_ALLOWED
    assert body.decode().strip() == f"egress refused: 127.0.0.1:{other.port} (not on the allow list)"
    proxies = env.forwarder(run_dir)
    assert session().get(f"http://127.0.0.1:{other.port}/", proxies=proxies).status_code == 403
    with pytest.raises(requests.exceptions.ProxyError, match="403"):
        session().get("https://169.254.169.254/latest/meta-data/", proxies=proxies, timeout=10)
    assert env.connector.calls == [] and env.resolver.calls == []  # refused before resolving or connecting
    assert len(other.seen) == seen_before
    report = env.proxy.close("run-1")
    assert "egress refused: 169.254.169.254:80 (not on the allow list)" in report.refused
    assert f"egress refused: 127.0.0.1:{other.port} (not on the allow list) (3 times)" in report.refused
    assert report.refused_total == 10 and report.allowed == 0


def test_listed_names_are_resolved_by_the_proxy_and_checked(env: Env, servers: dict[str, Server]) -> None:
    a = servers["allowed"]
    env.resolver.names.update({"evil.test": ["127.0.0.1"], "meta.test": ["169.254.169.254"],
                               "mapped.test": ["::ffff:127.0.0.1"], "mixed.test": ["93.184.216.34", "127.0.0.2"]})
    listed = [f"{name}:{a.port}" for name in ("evil.test", "meta.test", "mapped.test", "mixed.test", "gone.test")]
    run_dir = env.run("seatable", f"localhost:{a.port}", *listed)
    assert connect_status(run_dir, f"evil.test:{a.port}") == (403, ep.LOOPBACK)
    assert connect_status(run_dir, f"meta.test:{a.port}") == (403, ep.LINK_LOCAL)
    assert connect_status(run_dir, f"mapped.test:{a.port}") == (403, ep.LOOPBACK)
    assert connect_status(run_dir, f"mixed.test:{a.port}") == (403, ep.LOOPBACK)
    assert connect_status(run_dir, f"gone.test:{a.port}") == (403, ep.UNRESOLVED)
    assert env.connector.calls == []
    # "localhost" listed with its port may reach loopback: the one way to allow a local service by name.
    r = session().get(f"http://localhost:{a.port}/hello", proxies=env.forwarder(run_dir))
    assert (r.status_code, r.text) == (200, "hello from allowed")
    assert env.connector.calls == [("127.0.0.1", a.port)]
    report = env.proxy.close("run-1")
    assert f"egress refused: meta.test:{a.port} (link-local address 169.254.169.254)" in report.refused


def test_listed_name_on_the_private_network_is_allowed() -> None:
    """On-prem SeaTable often lives on 10.x; checked as a pure decision, no socket involved."""
    resolver = FakeResolver({"seatable.corp": ["10.1.2.3"], "evil.test": ["10.9.9.9"]})
    policy = EgressPolicy.for_run("seatable", "", "https://seatable.corp", ["http://files.corp:8082/seafhttp"])
    assert [str(ip) for ip in policy.check("seatable.corp", 443, resolver)] == ["10.1.2.3"]
    for host, port in (("seatable.corp", 80), ("evil.test", 443), ("files.corp", 80), ("10.1.2.3", 443)):
        with pytest.raises(ep.Refused, match=ep.NOT_ALLOWED):
            policy.check(host, port, resolver)
    assert policy.allow == ("https://seatable.corp", "http://files.corp:8082/seafhttp")
    assert EgressPolicy.for_run("open", "a.example, b.example:8443", None).allow == ("a.example", "b.example:8443")
    with pytest.raises(ValueError):
        EgressPolicy("none")
    with pytest.raises(ValueError):
        EgressPolicy("seatable", ("bad host!",))


@pytest.mark.parametrize(("host", "reason"), [
    ("127.0.0.1", ep.LOOPBACK), ("2130706433", ep.LOOPBACK), ("0x7f.1", ep.LOOPBACK), ("0177.0.0.1", ep.LOOPBACK),
    ("127.1", ep.LOOPBACK), ("[::ffff:127.0.0.1]", ep.LOOPBACK), ("::ffff:7f00:1", ep.LOOPBACK),
    ("[::1]", ep.LOOPBACK), ("[::127.0.0.1]", ep.LOOPBACK), ("2002:7f00:1::", ep.LOOPBACK),
    ("169.254.169.254", ep.LINK_LOCAL), ("2852039166", ep.LINK_LOCAL), ("::ffff:a9fe:a9fe", ep.LINK_LOCAL),
    ("64:ff9b::a9fe:a9fe", ep.LINK_LOCAL), ("[fe80::1]", ep.LINK_LOCAL),
    ("0.0.0.0", ep.RESERVED), ("0", ep.RESERVED), ("224.0.0.1", ep.RESERVED), ("255.255.255.255", ep.RESERVED),
    ("[ff02::1]", ep.RESERVED), ("10.0.0.1", ep.PRIVATE), ("172.16.0.1", ep.PRIVATE),
    ("192.168.1.1", ep.PRIVATE), ("100.64.0.1", ep.PRIVATE), ("[fd00::1]", ep.PRIVATE),
])
def test_open_mode_refuses_every_spelling_of_non_public_addresses(host: str, reason: str) -> None:
    resolver = FakeResolver()
    with pytest.raises(ep.Refused) as refused:
        EgressPolicy("open").check(host, 80, resolver)
    assert refused.value.reason == reason
    assert resolver.calls == []  # literals are never handed to a resolver
    with pytest.raises(ep.Refused, match=ep.NOT_ALLOWED):
        EgressPolicy("seatable", ("127.0.0.1:81",)).check(host, 80, resolver)


def test_open_mode_end_to_end(env: Env, servers: dict[str, Server]) -> None:
    a, other = servers["allowed"], servers["other"]
    env.resolver.names.update({"public.test": ["93.184.216.34"], "sneaky.test": ["10.1.2.3"]})
    run_dir = env.run("open", f"127.0.0.1:{other.port}")
    for target, reason in ((f"127.0.0.1:{a.port}", ep.LOOPBACK), (f"2130706433:{a.port}", ep.LOOPBACK),
                           (f"[::ffff:127.0.0.1]:{a.port}", ep.LOOPBACK), (f"localhost:{a.port}", ep.LOOPBACK),
                           ("169.254.169.254:80", ep.LINK_LOCAL), ("sneaky.test:443", ep.PRIVATE)):
        assert connect_status(run_dir, target) == (403, reason), target
    assert env.connector.calls == []
    # Public names pass the policy (checked without connecting); an explicitly listed literal is reachable.
    policy = EgressPolicy("open", (f"127.0.0.1:{other.port}",))
    assert [str(ip) for ip in policy.check("public.test", 8443, env.resolver)] == ["93.184.216.34"]
    r = session().get(f"http://2130706433:{other.port}/hi", proxies=env.forwarder(run_dir))
    assert (r.status_code, r.text) == (200, "hello from other")  # decimal spelling of the listed address


def test_not_armed_until_the_job_arrives(env: Env, servers: dict[str, Server]) -> None:
    a = servers["allowed"]
    run_dir = env.proxy.open("warm-7")
    assert connect_status(run_dir, f"127.0.0.1:{a.port}") == (403, ep.NOT_ARMED)
    env.proxy.arm("warm-7", EgressPolicy("seatable", (f"127.0.0.1:{a.port}",)))
    with pytest.raises(ValueError):
        env.proxy.arm("warm-7", EgressPolicy("open"))
    r = session().get(f"http://127.0.0.1:{a.port}/hi", proxies=env.forwarder(run_dir))
    assert r.status_code == 200
    stats = env.proxy.stats()
    assert stats["runs"] == 1 and stats["armed"] == 1 and stats["allowed"] == 1 and stats["refused"] == 1
    report = env.proxy.close("warm-7")
    assert report.refused == [f"egress refused: 127.0.0.1:{a.port} (not armed)"] and report.allowed == 1
    assert env.proxy.stats()["bytes_down"] == report.bytes_down > 0


def test_bad_requests_get_400(env: Env) -> None:
    run_dir = env.run("open")
    for request in (b"GET / HTTP/1.1\r\n\r\n", b"GET https://x.example/ HTTP/1.1\r\n\r\n",
                    b"CONNECT x.example HTTP/1.1\r\n\r\n", b"CONNECT bad_host!:443 HTTP/1.1\r\n\r\n",
                    b"CONNECT [evil.test]:443 HTTP/1.1\r\n\r\n",
                    b"GET http://x.example/ HTTP/1.1\r\nX-A: " + b"a" * 40_000 + b"\r\n\r\n",
                    b"GET http://x.example/ HTTP/1.1\r\n folded\r\n\r\n", b"NONSENSE\r\n\r\n"):
        assert raw(run_dir, request)[0] == 400, request[:40]
    rewritten = parse_request(b"GET http://u@h.example:8080/p?q=1 HTTP/1.1\r\nHost: evil\r\nConnection: x-a\r\n"
                              b"X-A: 1\r\nX-B: 2\r\nProxy-Connection: keep-alive\r\n\r\n")
    assert (rewritten.host, rewritten.port) == ("h.example", 8080)
    assert rewritten.head == b"GET /p?q=1 HTTP/1.1\r\nHost: h.example:8080\r\nX-B: 2\r\nConnection: close\r\n\r\n"


def test_directory_permissions_and_another_uid(env: Env) -> None:
    run_dir = env.proxy.open("perm-1")
    sock_path = run_dir / "proxy.sock"
    assert stat.S_IMODE(os.stat(env.base / "runs").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o755 and os.stat(run_dir).st_uid == os.geteuid()
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode) and stat.S_IMODE(os.lstat(sock_path).st_mode) == 0o666
    assert os.listdir(run_dir) == ["proxy.sock"]
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another uid")
    # A child as nobody sees the directory the way the runner sees the bind mount.
    dir_fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.fchdir(dir_fd)
            for attempt in (lambda: os.open("planted", os.O_CREAT | os.O_WRONLY, 0o644),
                            lambda: os.symlink("/etc/shadow", "planted"), lambda: os.unlink("proxy.sock"),
                            lambda: os.rename("proxy.sock", "x")):
                try:
                    attempt()
                    code |= 1
                except PermissionError:
                    pass
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect("proxy.sock")
                sock.sendall(b"CONNECT 127.0.0.1:9 HTTP/1.1\r\n\r\n")
                if b"not armed" not in sock.recv(4096):
                    code |= 2
        except BaseException:
            code |= 4
        os._exit(code)
    os.close(dir_fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # 1: could write; 2: could not use the socket
    assert os.listdir(run_dir) == ["proxy.sock"]


def test_close_cuts_connections_and_removes_everything_without_following_links(
        env: Env, servers: dict[str, Server]) -> None:
    a = servers["allowed"]
    victim = env.base / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "keep.txt").write_text("keep")
    run_dir = env.run("seatable", f"127.0.0.1:{a.port}")
    tunnel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tunnel.settimeout(5)
    tunnel.connect(str(run_dir / "proxy.sock"))
    tunnel.sendall(f"CONNECT 127.0.0.1:{a.port} HTTP/1.1\r\n\r\n".encode())
    assert tunnel.recv(4096).startswith(b"HTTP/1.1 200 Connection established")
    # What a runner cannot do (the directory is not its to write), planted anyway as the host's root.
    (run_dir / "link-file").symlink_to(victim / "keep.txt")
    (run_dir / "link-dir").symlink_to(victim)
    (run_dir / "dir").mkdir()
    (run_dir / "dir" / "link").symlink_to(victim / "sub")
    started = time.monotonic()
    report = env.proxy.close("run-1")
    assert tunnel.recv(4096) == b"" and time.monotonic() - started < 3
    tunnel.close()
    assert not run_dir.exists() and report.allowed == 1
    assert (victim / "keep.txt").read_text() == "keep" and (victim / "sub").is_dir()
    with pytest.raises(KeyError):
        env.proxy.close("run-1")
    # A leftover directory of a crashed service (here: a symlink in its place) is replaced, not followed.
    (env.base / "runs" / "run-2").symlink_to(victim)
    env.proxy.open("run-2")
    assert (victim / "keep.txt").exists() and os.listdir(env.base / "runs" / "run-2") == ["proxy.sock"]
    with pytest.raises(ValueError):
        env.proxy.open("../escape")


def test_ten_runners_with_concurrent_connections(env: Env, servers: dict[str, Server]) -> None:
    a = servers["allowed"]
    proxies = [env.forwarder(env.run("seatable", f"127.0.0.1:{a.port}", key=f"c-{i}")) for i in range(10)]
    results: list[int] = []

    def fetch(p: dict[str, str]) -> None:
        results.append(session().get(f"http://127.0.0.1:{a.port}/hi", proxies=p, timeout=10).status_code)

    threads = [threading.Thread(target=fetch, args=(p,)) for p in proxies for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [200] * 40
    assert sum(env.proxy.close(f"c-{i}").allowed for i in range(10)) == 40


def download(url: str, proxies: dict[str, str] | None) -> float:
    """MB/s for one 50 MB download."""
    started = time.perf_counter()
    with session().get(url, proxies=proxies, stream=True, timeout=30) as r:
        got = sum(len(chunk) for chunk in r.iter_content(chunk_size=1024 * 1024))
    assert got == BIG
    return BIG / (time.perf_counter() - started) / 1e6


@pytest.fixture
def big_server() -> Iterator[int]:
    """The 50 MB origin in its own process, as a real server is: the direct download then does not share
    this interpreter's GIL with the client, and neither does the proxied one."""
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from tests.sandbox.test_egress import Server; "
            "print(Server('big').port, flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(ROOT)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


def test_a_large_download_arrives_whole_and_is_counted(env: Env, big_server: int) -> None:
    """50 MB through forwarder and proxy, byte-complete (speed: `./dev bench egress_throughput`)."""
    proxies = env.forwarder(env.run("seatable", f"127.0.0.1:{big_server}"))
    download(f"http://127.0.0.1:{big_server}/big", proxies)
    assert env.proxy.close("run-1").bytes_down >= BIG
