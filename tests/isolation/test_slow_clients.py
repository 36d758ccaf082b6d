"""The sandbox API survives slow and hostile clients (issue 13, item 4).

200 connections send request heads one byte a second, half of them with the sandbox's token; while
they are verifiably held open, /ping/ and an authenticated submit must still be answered. With
gunicorn's gthread worker each of them held a thread and both timed out. What is asserted is that
the answers come while the slow clients are held (not a latency bound, which a loaded machine would
break); bench/slow_clients.py measures the latency.
"""

from __future__ import annotations

import time
from typing import Any

import requests

from httpworker import HEAD_TIMEOUT, MAX_HEAD
from tests.support.podman import CallbackReceiver, SandboxProcess
from tests.support.slow_clients import heads, slow_clients

SLOW = 200


def test_ping_and_submit_answer_while_200_slow_clients_hold_connections(
        sandbox_factory: Any, receiver: CallbackReceiver) -> None:
    sandbox: SandboxProcess = sandbox_factory()
    payloads = (heads("/function/run-python", SLOW // 2, token=sandbox.token, method="POST")
                + heads("/ping/", SLOW // 2))
    with slow_clients(sandbox.port, payloads) as slow:
        slow.wait_sent(each=2)
        assert slow.open() == SLOW  # all of them held, none answered or dropped
        started = time.monotonic()
        ping = requests.get(sandbox.url + "/ping/", timeout=10)
        ping_seconds = time.monotonic() - started
        submit = sandbox.run(701, "print('through')")
        submit_seconds = time.monotonic() - started - ping_seconds
        assert (ping.status_code, ping.text) == (200, "Pong")
        assert submit.status_code == 202, submit.text
        assert receiver.result(701)["output"] == "through\n"
        print(f"while {slow.open()} slow clients held: ping {ping_seconds * 1000:.0f} ms, "
              f"submit {submit_seconds * 1000:.0f} ms")


def test_an_unfinished_head_is_refused_after_the_head_timeout(sandbox_factory: Any) -> None:
    sandbox: SandboxProcess = sandbox_factory()
    with slow_clients(sandbox.port, heads("/ping/", 1)) as slow:
        slow.wait_sent(each=1)
        started = time.monotonic()
        while slow.open():
            assert time.monotonic() - started < HEAD_TIMEOUT + 10, "the slow head was never refused"
            time.sleep(0.1)
        answer = slow.sockets[0].recv(4096)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'{"error": "request head not complete within 10 s"}' in answer
    assert requests.get(sandbox.url + "/ping/", timeout=10).text == "Pong"


def test_an_oversized_head_is_refused(sandbox_factory: Any) -> None:
    sandbox: SandboxProcess = sandbox_factory()
    response = requests.get(sandbox.url + "/ping/", headers={"X-Big": "y" * (MAX_HEAD + 1)}, timeout=10)
    assert response.status_code == 431
    assert response.json() == {"error": f"request head over {MAX_HEAD} bytes"}
