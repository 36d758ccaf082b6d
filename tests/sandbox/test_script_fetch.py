"""The script download obeys the runners' egress rules (issue 20: a task/file answer pointing at a loopback URL
brought the first line of that page back in the run's output)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from sandbox import texts
from sandbox.egress_policy import EgressPolicy
from sandbox.script_fetch import THIS_HOST, FetchRefused, _Guard, fetch
from tests.support.podman import CallbackReceiver, SandboxProcess

SECRET = "TOP SECRET: the admin password is hunter2"
SCRIPT = "print('fetched and run')\n"


class Site:
    """A real HTTP server on loopback: /script.py, /secret, /redirect?to=URL."""

    def __init__(self) -> None:
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.hits.append(self.path)
                if self.path.startswith("/redirect?to="):
                    self.send_response(302)
                    self.send_header("Location", self.path.split("=", 1)[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = (SECRET if self.path == "/secret" else SCRIPT).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.hits: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sites() -> Iterator[tuple[Site, Site]]:
    seatable, internal = Site(), Site()
    yield seatable, internal
    seatable.close()
    internal.close()


def no_host_addresses() -> tuple[Any, ...]:
    return ()


def test_only_what_a_runner_may_reach_is_fetched(sites: tuple[Site, Site]) -> None:
    seatable, internal = sites
    policy = EgressPolicy.for_run("open", "", seatable.url)  # the run's own SeaTable server is listed
    assert fetch(f"{seatable.url}/script.py", policy, no_host_addresses, 10, 1 << 20) == (200, SCRIPT.encode())
    for url, reason in (
        (f"{internal.url}/secret", "loopback address"),
        (f"http://localhost:{internal.port}/secret", "loopback address"),
        (f"http://[::ffff:127.0.0.1]:{internal.port}/secret", "loopback address"),
        (f"http://2130706433:{internal.port}/secret", "loopback address"),  # 127.0.0.1 as one number
        (f"{seatable.url}/redirect?to={internal.url}/secret", "loopback address"),  # a redirect is checked too
        ("http://169.254.169.254/latest/meta-data/", "link-local address"),
        ("http://10.1.2.3/", "private address"),
    ):
        with pytest.raises(FetchRefused, match=reason):
            fetch(url, policy, no_host_addresses, 10, 1 << 20)
    assert internal.hits == []  # not one request reached the internal server
    allowed = EgressPolicy.for_run("open", f"127.0.0.1:{internal.port}", seatable.url)  # listed by the admin
    assert fetch(f"{internal.url}/secret", allowed, no_host_addresses, 10, 1 << 20)[1] == SECRET.encode()


def test_this_hosts_own_addresses_are_refused_unless_listed() -> None:
    public = ipaddress.ip_address("93.184.215.14")  # stands for this host's public address

    def resolver(name: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (str(public), port))]

    guard = _Guard(EgressPolicy.for_run("open", "", None), lambda: (public,), resolver)
    with pytest.raises(FetchRefused, match=THIS_HOST):
        guard.connect("files.example.org", 80, 1.0)
    listed = _Guard(EgressPolicy.for_run("open", "", "http://files.example.org"), lambda: (public,), resolver)
    with contextlib.suppress(OSError):  # allowed: it connects (or cannot, wherever the test runs), never refused
        listed.connect("files.example.org", 80, 0.5).close()


def test_a_task_file_answer_pointing_at_loopback_does_not_come_back(
    sandbox: SandboxProcess, receiver: CallbackReceiver, sites: tuple[Site, Site]
) -> None:
    """The attack through the real sandbox: the page never reaches the run's output, the run fails clearly."""
    seatable, internal = sites
    for script_id, url in ((401, f"{internal.url}/secret"), (402, f"{seatable.url}/redirect?to={internal.url}/secret")):
        response = sandbox.post({"script_id": script_id, "script_url": url,
                                 "env": {"dtable_web_url": seatable.url, "api_token": "t"}})
        assert response.status_code == 202, response.text
        result = receiver.result(script_id)
        assert SECRET not in str(result) and "hunter2" not in sandbox.log()
        assert result["success"] is False and result["output"].startswith(texts.FETCH_REFUSED.split("{")[0])
        assert "loopback address" in result["output"]
    assert internal.hits == []
    ok = sandbox.post({"script_id": 403, "script_url": f"{seatable.url}/script.py",
                       "env": {"dtable_web_url": seatable.url, "api_token": "t"}})
    assert ok.status_code == 202 and receiver.result(403)["output"] == "fetched and run\n"
    assert requests.get(f"{internal.url}/secret", timeout=5).text == SECRET  # it was there all along
