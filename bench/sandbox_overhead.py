"""Per-run overhead: warm pool vs cold path, per network mode, vs `podman run` per script vs the bare interpreter.

Run as root: `./dev bench sandbox_overhead [--runs N] [--sustain SECONDS]`. Everything is
measured in one run, interleaved, on the same image with the same options, so the ratios hold
on a noisy machine.
- warm / cold: POST /function/run-python until the result callback arrives (HTTP, runner,
  the job over stdin, output, result through the outbox); warm takes a pre-started runner
  (PYTHON_SANDBOX_PREIMPORT=seatable_api,pandas), cold creates one per run. Once per
  PYTHON_RUNNER_NETWORK mode: open (slirp4netns and the runner's nftables table; every run names
  a SeaTable server on a private address, so each warm run pays for the per-run rule update and
  the read-back of refused destinations), seatable (the egress proxy's socket) and none.
- podman run: upstream's way, one `podman run --rm -i` CLI call per script, rootless as the
  sandbox user, the job on stdin to the same entrypoint.
- floor: `chroot <runner rootfs> python3 -c <script>`, no container at all.
Then a sustained phase: 10 clients submit back to back to the warm sandbox for --sustain
seconds; runs/s, latency percentiles and CPU per run (all cores, whole machine, from /proc/stat).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench.report import machine, median, percentile, update_section
from sandbox.driver import Job
from sandbox.host import configured_user, lookup_user
from sandbox.image import DEFAULT_CACHE, ENTRYPOINT_COMMAND, RUNNER_FILES, Recipe, default_image, runner_files_dir
from sandbox.limits import RunnerLimits, detect
from sandbox.podman_api import PodmanAPI
from sandbox.seccomp_profile import write_profile
from tests.support.podman import CallbackReceiver, SandboxProcess, free_port

SCRIPTS = {
    "print('hi')": ("print('hi')", "hi\n"),
    "import pandas, seatable_api": ("import pandas, seatable_api\nprint('ok')", "ok\n"),
}
_ids = itertools.count(1)
MODES = ("open", "seatable", "none")
# A SeaTable server on a private address: the open mode adds it to the runner's table per run (its worst case).
# The scripts never connect to it.
RUN_ENV = {"dtable_web_url": "http://192.168.77.10:8000"}


def start_sandbox(receiver: CallbackReceiver, state: Path, pool: int,
                  preimport: str = "seatable_api,pandas", network: str = "open") -> SandboxProcess:
    user = lookup_user(configured_user())
    state.mkdir(parents=True, exist_ok=True)
    os.chown(state, user.uid, user.gid)
    port = free_port()
    proc = SandboxProcess(user, {
        "PYTHON_SANDBOX_AUTH_TOKEN": "bench",
        "PYTHON_SCHEDULER_URL": receiver.url,
        "PYTHON_SANDBOX_BIND": f"127.0.0.1:{port}",
        "PYTHON_SANDBOX_STATE_DIR": str(state),
        "PYTHON_SANDBOX_NODE_NAME": f"bench-{port}",
        "PYTHON_SANDBOX_LOG_LEVEL": "warning",
        "PYTHON_SANDBOX_WARM_POOL": str(pool),
        "PYTHON_SANDBOX_PREIMPORT": preimport,
        "PYTHON_STARTER_THREAD_COUNT": "10",
        "PYTHON_RUNNER_NETWORK": network,
    }, port, state, token="bench")
    proc.start()
    return proc


def wait_pool(proc: SandboxProcess, ready: int, timeout: float = 60) -> None:
    """Until `ready` pooled runners have finished their pre-imports: no refill competes with a measurement."""
    deadline = time.monotonic() + timeout
    while proc.health()["warm_pool"]["ready"] < ready and time.monotonic() < deadline:
        time.sleep(0.01)


def time_sandbox(proc: SandboxProcess, receiver: CallbackReceiver, script: str, expected: str) -> float:
    script_id = next(_ids)
    started = time.perf_counter()
    response = proc.run(script_id, script, env=RUN_ENV)
    assert response.status_code == 202, response.text
    result = receiver.result(script_id)
    elapsed = time.perf_counter() - started
    assert result["output"] == expected, result
    return elapsed


def cli_argv(image: str, profile: str) -> list[str]:
    user = lookup_user(configured_user())
    api = PodmanAPI(user.socket_url)
    enforcement = detect(api.client.info())
    api.close()
    limits = RunnerLimits(memory=1 << 30, pids=256, cpus=0, timeout=60, tmpfs_size=100 << 20)
    return user.command([
        "podman", "run", "--rm", "-i", "--read-only", "--network", "none", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--security-opt", f"seccomp={profile}",
        "--tmpfs", "/tmp:rw,nosuid,nodev,size=104857600", "--user", "1000:1000",
        "--ulimit", "nofile=1024:1024", "--log-driver", "none",
        "-v", f"{runner_files_dir()}:{RUNNER_FILES}:ro,nosuid,nodev,noexec",
        "--entrypoint", json.dumps(list(ENTRYPOINT_COMMAND)), image, *limits.entrypoint_args(enforcement),
    ])


def time_cli(argv: list[str], script: str, expected: str) -> float:
    user = lookup_user(configured_user())
    job = Job(0, script, "", {}).line().decode()
    started = time.perf_counter()
    result = subprocess.run(argv, input=job, capture_output=True, text=True, env=user.env(), cwd="/", check=False)
    elapsed = time.perf_counter() - started
    assert result.stdout == expected, result.stdout + result.stderr
    return elapsed


def time_floor(rootfs: Path, script: str, expected: str) -> float:
    started = time.perf_counter()
    out = subprocess.run(["chroot", str(rootfs), "/usr/bin/python3", "-c", script],
                         capture_output=True, text=True, check=True).stdout
    elapsed = time.perf_counter() - started
    assert out == expected
    return elapsed


def cpu_seconds() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(x) for i, x in enumerate(fields) if i not in (3, 4))  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def sustain(proc: SandboxProcess, receiver: CallbackReceiver, seconds: float, clients: int) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < stop_at:
            try:
                elapsed = time_sandbox(proc, receiver, "print('hi')", "hi\n")
            except AssertionError:  # 429: every slot busy; try again
                time.sleep(0.05)
                continue
            with lock:
                latencies.append(elapsed)

    cpu0, t0 = cpu_seconds(), time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, cpu = time.monotonic() - t0, cpu_seconds() - cpu0
    ms = [v * 1000 for v in latencies]
    return {"runs": len(ms), "wall": wall, "rate": len(ms) / wall, "p50": median(ms),
            "p90": percentile(ms, 90), "p99": percentile(ms, 99), "cpu_ms": cpu / max(1, len(ms)) * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--sustain", type=float, default=60, help="seconds of the sustained phase; 0 skips it")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()

    image = default_image()
    tarball = DEFAULT_CACHE / f"rootfs-{Recipe.packaged().digest()}.tar"
    work = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    work.chmod(0o755)
    rootfs = work / "rootfs"
    rootfs.mkdir()
    subprocess.run(["tar", "-C", str(rootfs), "-xf", str(tarball)], check=True)
    receiver = CallbackReceiver()
    receiver.start()
    warm = {mode: start_sandbox(receiver, work / f"warm-{mode}", pool=2, network=mode) for mode in MODES}
    cold = {mode: start_sandbox(receiver, work / f"cold-{mode}", pool=0, network=mode) for mode in MODES}
    argv = cli_argv(image, str(write_profile(work)))
    tables: list[str] = []
    sustained: dict[str, float] = {}
    network_work: dict[str, float] = {}
    try:
        for name, (script, expected) in SCRIPTS.items():
            ways: dict[str, Callable[[], float]] = {}
            for mode in MODES:
                ways[f"warm pool, {mode}"] = partial(time_sandbox, warm[mode], receiver, script, expected)
                ways[f"cold path, {mode}"] = partial(time_sandbox, cold[mode], receiver, script, expected)
            ways["podman run"] = partial(time_cli, argv, script, expected)
            ways["floor"] = partial(time_floor, rootfs, script, expected)
            samples: dict[str, list[float]] = {way: [] for way in ways}
            for i in range(args.runs + 2):
                for way, measure in ways.items():
                    # A lone click finds the pool full, and no refill competes with the next way's run.
                    for proc in warm.values():
                        wait_pool(proc, 2)
                    value = measure()
                    if i >= 2:  # the first two of each warm caches
                        samples[way].append(value)
            tables.append(render(name, samples))
        network_work = {path: procs["open"].health()["egress"]["per_run_ms"]
                        for path, procs in (("warm", warm), ("cold", cold))}
        network_work["setup"] = cold["open"].health()["egress"]["setup_ms"]
        if args.sustain:
            sustained = sustain(warm["open"], receiver, args.sustain, clients=10)
    finally:
        for proc in [*warm.values(), *cold.values()]:
            proc.stop()
        receiver.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)

    body = (f"{machine()}. Image `{image}`.\n"
            f"Command: `./dev bench sandbox_overhead --runs {args.runs} --sustain {args.sustain:g}`. "
            f"{args.runs} runs of each way, interleaved; milliseconds from request to result.\n\n"
            + "\n\n".join(tables))
    if network_work:
        body += ("\n\nThe open network's own work on a run's path (the run's rules update, as its SeaTable server "
                 "is on a private address, and the read-back of refused destinations), from the sandboxes' "
                 f"`/health` (`egress.per_run_ms`): warm {network_work['warm']:.1f} ms, "
                 f"cold {network_work['cold']:.1f} ms per run (mean); writing a new runner's table "
                 f"(`egress.setup_ms`, in the pool on the warm path): {network_work['setup']:.1f} ms.")
    if sustained:
        body += ("\n\nSustained, 10 clients back to back on the warm sandbox (open network) for "
                 f"{sustained['wall']:.0f} s: "
                 f"**{sustained['rate']:.1f} runs/s** ({sustained['runs']:.0f} runs), latency p50 "
                 f"{sustained['p50']:.0f} ms, p90 {sustained['p90']:.0f} ms, p99 {sustained['p99']:.0f} ms; "
                 f"CPU per run (whole machine, all processes) {sustained['cpu_ms']:.0f} ms.\n")
    print(body)
    if not args.no_write:
        update_section("Sandbox: per-run overhead", body)
    return 0


def render(name: str, samples: dict[str, list[float]]) -> str:
    warm_p50 = median(samples["warm pool, open"])
    rows = [f"`{name}`\n", "| way | p50 ms | p90 ms | p99 ms | p50 / warm p50 |", "|---|---|---|---|---|"]
    for way, values in samples.items():
        ms = [v * 1000 for v in values]
        rows.append(f"| {way} | {median(ms):.0f} | {percentile(ms, 90):.0f} | {percentile(ms, 99):.0f} | "
                    f"{median(values) / warm_p50:.2f}x |")
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
