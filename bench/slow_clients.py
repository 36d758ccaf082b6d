"""Slow clients: /ping/ and an authenticated submit, alone and while 200 slow clients hold connections.

Run as root: `./dev bench slow_clients [--rounds N]`. Both services, as in production (the sandbox as
the sandbox user from the installed virtualenv, the scheduler from this checkout on SQLite). The slow
clients send request heads one byte a second, half with the service's token; they are replaced by a
fresh 200 every few seconds, before the services' head timeout would end them. Phases alternate
(alone, slow, alone, ...) so that both see the same machine. Milliseconds from request to response.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

from bench.report import machine, percentile, update_section
from bench.sandbox_overhead import start_sandbox
from httpworker import HEAD_TIMEOUT
from tests.scheduler.conftest import AUTH, BASE, TOKEN, env_for, start_scheduler, stop_scheduler
from tests.support.podman import CallbackReceiver
from tests.support.slow_clients import heads, slow_clients

SLOW = 200
_ids = itertools.count(9000)


def timed(call: Callable[[], requests.Response], expected: int) -> float:
    started = time.perf_counter()
    response = call()
    elapsed = time.perf_counter() - started
    assert response.status_code == expected, response.text
    return elapsed * 1000


def measure(port: int, payloads: list[bytes], rounds: int, probes: dict[str, Callable[[], float]],
            ) -> dict[str, dict[str, list[float]]]:
    """{probe: {"alone": [...], "200 slow clients": [...]}}, rounds of each, alternating phases."""
    samples: dict[str, dict[str, list[float]]] = {name: {"alone": [], "200 slow clients": []} for name in probes}
    batch = 5
    for _ in range(0, rounds, batch):
        for name, probe in probes.items():
            samples[name]["alone"] += [probe() for _ in range(batch)]
        with slow_clients(port, payloads) as slow:
            slow.wait_sent(each=2)
            started = time.monotonic()
            for name, probe in probes.items():
                samples[name]["200 slow clients"] += [probe() for _ in range(batch)]
            assert time.monotonic() - started < HEAD_TIMEOUT - 2, "a batch outlived the slow clients"
            assert slow.open() == SLOW, "the slow clients were dropped during the measurement"
    return samples


def sandbox_samples(rounds: int) -> dict[str, dict[str, list[float]]]:
    receiver = CallbackReceiver()
    receiver.start()
    with tempfile.TemporaryDirectory(prefix="bench-slow-") as tmp:
        Path(tmp).chmod(0o755)
        proc = start_sandbox(receiver, Path(tmp) / "state", pool=2, preimport="")
        try:
            def submit() -> float:
                script_id = next(_ids)
                elapsed = timed(lambda: proc.run(script_id, "print('hi')"), 202)
                receiver.result(script_id)  # not measured: the run itself
                return elapsed

            payloads = heads("/function/run-python", SLOW // 2, token=proc.token, method="POST") + heads(
                "/ping/", SLOW // 2)
            return measure(proc.port, payloads, rounds, {
                "GET /ping/": lambda: timed(lambda: requests.get(proc.url + "/ping/", timeout=10), 200),
                "POST /function/run-python": submit,
            })
        finally:
            proc.stop()
            receiver.stop()


def scheduler_samples(rounds: int) -> dict[str, dict[str, list[float]]]:
    with tempfile.TemporaryDirectory(prefix="bench-slow-") as tmp:
        server = start_scheduler(env_for(Path(tmp) / "scheduler.sqlite3"), Path(tmp) / "scheduler.log")
        try:
            body = {"dtable_uuid": BASE, "script_name": "a.py", "owner": "o@x"}
            port = int(server.url.rsplit(":", 1)[1])
            payloads = heads("/run-script/", SLOW // 2, token=TOKEN, method="POST") + heads("/ping/", SLOW // 2)
            return measure(port, payloads, rounds, {
                "GET /ping/": lambda: timed(lambda: requests.get(server.url + "/ping/", timeout=10), 200),
                "POST /run-script/": lambda: timed(
                    lambda: requests.post(server.url + "/run-script/", json=body, headers=AUTH, timeout=10), 200),
            })
        finally:
            stop_scheduler(server)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    rows = ["| service | request | p50 alone | p50 with 200 slow | p90 with 200 slow | max with 200 slow | "
            "p50 delay |", "|---|---|---:|---:|---:|---:|---:|"]
    for service, samples in (("sandbox", sandbox_samples(args.rounds)), ("scheduler", scheduler_samples(args.rounds))):
        for request, phases in samples.items():
            alone, slow = phases["alone"], phases["200 slow clients"]
            rows.append(f"| {service} | `{request}` | {percentile(alone, 50):.0f} ms | {percentile(slow, 50):.0f} ms "
                        f"| {percentile(slow, 90):.0f} ms | {max(slow):.0f} ms | "
                        f"{percentile(slow, 50) - percentile(alone, 50):+.0f} ms |")
    body = (f"{machine()}. Command: `./dev bench slow_clients --rounds {args.rounds}`.\n"
            f"{args.rounds} requests of each kind per phase; the slow clients send a request head one byte a "
            "second (half of them with the token) and are verified still held after each batch. Both services "
            "run gunicorn with `httpworker.HeadFirstWorker` (request heads read by the event loop, 10 s head "
            "timeout). With gunicorn's gthread worker, 30 such clients made both requests time out (issue 13).\n\n"
            + "\n".join(rows))
    update_section("Slow clients (sandbox and scheduler APIs)", body)
    print(body)
    return 0
