"""The open network's rules and their inputs: pure logic, and the generated table applied in a scratch netns."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import pytest

from sandbox.config import SandboxConfig
from sandbox.network import CachedResolver, destinations, protected_endpoints
from sandbox.network_rules import (
    SLIRP_DNS,
    Destination,
    Plan,
    allow_elements,
    open_by_default,
    reason,
    report_lines,
    ruleset,
)

ip = ipaddress.ip_address
HOST = ip("192.0.2.2")
PLAN = Plan(host_addresses=(HOST, ip("fd00::2")), protected=((HOST, 8088), (HOST, 5055)),
            allowed=(Destination(ip("10.1.2.3"), "tcp", 25),))


def names(table: dict[str, list[str]]) -> CachedResolver:
    def resolve(name: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        if name not in table:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return [ip(a) for a in table[name]]

    return CachedResolver(resolve)


@pytest.mark.parametrize(("address", "expected"), [
    ("93.184.216.34", True), ("192.175.48.150", True), ("2a00:1450:4001::200e", True),
    ("10.0.0.1", False), ("172.16.5.4", False), ("192.168.1.1", False), ("100.64.0.1", False),
    ("127.0.0.1", False), ("169.254.169.254", False), ("10.0.2.2", False), ("192.0.2.2", False),
    ("224.0.0.1", False), ("255.255.255.255", False), ("0.0.0.0", False), ("198.18.0.1", False),
    ("::1", False), ("::ffff:169.254.169.254", False), ("64:ff9b::a9fe:a9fe", False), ("fd00:ec2::254", False),
    ("fe80::1", False), ("ff02::1", False), ("2002:a9fe:a9fe::1", False), ("2001:db8::1", False),
    ("2001::1", False),
])
def test_what_is_the_internet(address: str, expected: bool) -> None:
    assert open_by_default(ip(address), PLAN) is expected


def test_reasons_and_report_lines() -> None:
    refused = [("192.0.2.2", "tcp", 8088, 1), ("10.0.2.2", "tcp", 80, 1), ("192.0.2.2", "tcp", 22, 3),
               ("169.254.169.254", "udp", 53, 1), ("fd00:ec2::254", "tcp", 80, 1), ("240.0.0.1", "tcp", 1, 1),
               ("8.8.8.8", "udp", 53, 2), ("127.0.0.1", "tcp", 9, 1)]
    assert report_lines(refused, PLAN) == [
        "egress refused: 192.0.2.2:8088 (sandbox or scheduler port)",
        "egress refused: 10.0.2.2:80 (this host's loopback)",
        "egress refused: 192.0.2.2:22 (address of this host) (3 times)",
        "egress refused: 169.254.169.254:53/udp (link-local address)",
        "egress refused: [fd00:ec2::254]:80 (private address)",
        "egress refused: 240.0.0.1:1 (reserved address)",
        "egress refused: 8.8.8.8:53/udp (DNS server other than the runner's resolver) (2 times)",
        "egress refused: 127.0.0.1:9 (loopback address)",
    ]
    assert reason(ip("10.1.2.3"), 25, PLAN) == "private address"
    many = [(f"10.0.0.{n}", "tcp", 80, 1) for n in range(1, 25)]
    lines = report_lines(many, PLAN)
    assert len(lines) == 21 and lines[-1] == "egress: 4 more refused destinations not shown"


def test_allow_entries_become_table_entries() -> None:
    resolve = names({"mail.internal": ["10.0.0.25"], "seatable.example": ["192.168.7.7", "fd12::7"]})
    assert destinations("https://seatable.example", resolve) == [
        Destination(ip("192.168.7.7"), "tcp", 443), Destination(ip("fd12::7"), "tcp", 443)]
    assert destinations("http://seatable.example:8000/x", resolve)[0] == Destination(ip("192.168.7.7"), "tcp", 8000)
    assert destinations("mail.internal:587", resolve) == [Destination(ip("10.0.0.25"), None, 587)]
    assert destinations("mail.internal", resolve) == [Destination(ip("10.0.0.25"), None, None)]
    assert destinations("[fd00::5]:389", resolve) == [Destination(ip("fd00::5"), None, 389)]
    assert destinations("fd00::5", resolve) == [Destination(ip("fd00::5"), None, None)]
    assert destinations("unknown.internal:25", resolve) == []  # resolves to nothing: nothing allowed
    assert destinations("ftp://mail.internal", resolve) == []
    assert allow_elements(destinations("mail.internal:587", resolve)) == (
        "add element inet runner allow4 { 10.0.0.25 . tcp . 587 }\n"
        "add element inet runner allow4 { 10.0.0.25 . udp . 587 }\n")
    assert allow_elements([Destination(ip("fd00::5"))]) == "add element inet runner allow_hosts6 { fd00::5 }\n"
    assert allow_elements([]) == ""


def test_protected_endpoints() -> None:
    resolve = names({"scheduler": ["10.89.0.5"]})
    assert protected_endpoints("http://scheduler:5055", "0.0.0.0:8088", resolve) == (
        ((ip("10.89.0.5"), 5055), (ip("10.89.0.5"), 8088)), (5055, 8088))
    assert protected_endpoints("https://127.0.0.1", "[::1]:9000", resolve) == (
        ((ip("127.0.0.1"), 443), (ip("127.0.0.1"), 9000)), (443, 9000))


def test_resolver_cache_keeps_answers_and_failures_briefly() -> None:
    calls: list[str] = []

    def resolve(name: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        calls.append(name)
        if name == "bad":
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return [ip("10.0.0.1")]

    cached = CachedResolver(resolve, ttl=60)
    assert cached("a") == cached("a") == [ip("10.0.0.1")]
    assert cached("bad") == cached("bad") == []
    assert calls == ["a", "bad"]
    assert CachedResolver(resolve, ttl=0)("a") and calls[-1] == "a"


def test_network_modes(caplog: pytest.LogCaptureFixture) -> None:
    base = {"PYTHON_SANDBOX_AUTH_TOKEN": "a"}
    assert SandboxConfig.from_env(base).network == "open"  # upstream's users have a network
    for mode in ("none", "seatable", "open"):
        assert SandboxConfig.from_env({**base, "PYTHON_RUNNER_NETWORK": mode}).network == mode
    with caplog.at_level(logging.WARNING):
        config = SandboxConfig.from_env({**base, "PYTHON_RUNNER_NETWORK": "runner-net"})
    assert config.network == "open"
    assert [r.getMessage() for r in caplog.records] == [
        "PYTHON_RUNNER_NETWORK=runner-net is a Docker network name (upstream's way); runners get the open "
        "network: internet yes, this host and private addresses no"]
    dns = SandboxConfig.from_env({**base, "PYTHON_RUNNER_DNS": "10.0.0.53, 2001:4860:4860::8888"}).runner_dns
    assert dns == ("10.0.0.53", "2001:4860:4860::8888")


# Runs inside a network namespace of its own (unshare --net), with one end of a veth pair as the way out:
# packets that pass the table vanish there (a timeout), refused ones fail at once. Nothing leaves the machine.
PROBE = """
import errno, json, socket, sys
def attempt(host, port, kind):
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        s.settimeout(0.3)
        try:
            if kind == socket.SOCK_DGRAM:
                s.connect((host, port)); s.send(b'x'); s.send(b'x')
                return 'passed'
            s.connect((host, port))
            return 'passed'
        except TimeoutError:
            return 'passed'
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps({f'{h} {p} {k}': attempt(h, p, socket.SOCK_DGRAM if k == 'udp' else socket.SOCK_STREAM)
                  for h, p, k in json.loads(sys.argv[1])}))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nft")
def test_the_table_in_a_scratch_namespace() -> None:
    """The generated table, applied by the real nft in a throwaway netns: the order of its checks."""
    plan = Plan(resolvers=(SLIRP_DNS,), host_addresses=(ip("198.51.100.7"),),
                protected=((ip("10.9.9.9"), 5055),),
                allowed=(Destination(ip("10.9.9.9")), Destination(ip("10.1.1.1"), "tcp", 25),
                         Destination(ip("8.8.4.4"), None, 53)))
    probes = [
        ("93.184.216.34", 443, "tcp"), ("93.184.216.34", 443, "udp"),  # the internet
        ("10.0.2.3", 53, "udp"), ("10.0.2.3", 53, "tcp"), ("10.0.2.3", 80, "tcp"),  # the resolver: DNS only
        ("8.8.8.8", 53, "udp"), ("8.8.4.4", 53, "udp"),  # other DNS refused unless listed
        ("10.9.9.9", 22, "tcp"), ("10.9.9.9", 5055, "tcp"),  # a listed host, but never its protected port
        ("10.1.1.1", 25, "tcp"), ("10.1.1.1", 25, "udp"), ("10.1.1.1", 26, "tcp"),  # host:port (URL: tcp)
        ("198.51.100.7", 80, "tcp"), ("169.254.169.254", 80, "tcp"), ("10.0.2.2", 80, "tcp"),
        ("192.168.1.1", 80, "udp"), ("2a00:1450:4001::200e", 443, "tcp"), ("fd00:ec2::254", 80, "tcp"),
        ("::ffff:169.254.169.254", 80, "tcp"),
    ]
    setup = ("ip link set lo up && ip link add d0 type veth peer name d1 && ip link set d0 up && ip link set d1 up && "
             "ip addr add 10.0.2.100/24 dev d0 && ip route add default dev d0 && "
             "ip addr add fd00::100/64 dev d0 nodad && ip -6 route add default dev d0 && "
             "nft -f - && exec \"$0\" -c \"$1\" \"$2\"")
    result = subprocess.run(["unshare", "--net", "sh", "-c", setup, sys.executable, PROBE, json.dumps(probes)],
                            input=ruleset(plan), capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome == {
        "93.184.216.34 443 tcp": "passed", "93.184.216.34 443 udp": "passed",
        "10.0.2.3 53 udp": "passed", "10.0.2.3 53 tcp": "passed", "10.0.2.3 80 tcp": "ECONNREFUSED",
        "8.8.8.8 53 udp": "EPERM", "8.8.4.4 53 udp": "passed",
        "10.9.9.9 22 tcp": "passed", "10.9.9.9 5055 tcp": "ECONNREFUSED",
        "10.1.1.1 25 tcp": "passed", "10.1.1.1 25 udp": "EPERM", "10.1.1.1 26 tcp": "ECONNREFUSED",
        "198.51.100.7 80 tcp": "ECONNREFUSED", "169.254.169.254 80 tcp": "ECONNREFUSED",
        "10.0.2.2 80 tcp": "ECONNREFUSED", "192.168.1.1 80 udp": "EPERM",
        "2a00:1450:4001::200e 443 tcp": "passed", "fd00:ec2::254 80 tcp": "ECONNREFUSED",
        "::ffff:169.254.169.254 80 tcp": "ECONNREFUSED",
    }, outcome
