"""Per-run overhead of a trivial script: this sandbox vs `podman run` per script vs the floor.

Run as root: `./dev bench sandbox_overhead [--runs N]`. All three are measured in one run,
interleaved, on the same image with the same options, so the ratios hold on a noisy machine.
- sandbox: POST /function/run-python until the result callback arrives (HTTP, create,
  attach, start, the job over stdin, output, result through the outbox).
- podman run: upstream's way, one `podman run --rm -i` CLI call per script, as the
  sandbox user (rootless), the job on stdin to the same entrypoint.
- floor: `chroot <runner rootfs> python3 -c pass`, no container at all.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from bench.report import machine, median, percentile, update_section
from sandbox.host import DEFAULT_USER, lookup_user
from sandbox.image import DEFAULT_CACHE, Recipe, default_image
from sandbox.limits import RunnerLimits, detect
from sandbox.podman_api import PodmanAPI
from tests.support.podman import CallbackReceiver, SandboxProcess, free_port

SCRIPT = "print('hi')"


def start_sandbox(receiver: CallbackReceiver, state: Path) -> SandboxProcess:
    user = lookup_user(DEFAULT_USER)
    state.mkdir(parents=True, exist_ok=True)
    import os

    os.chown(state, user.uid, user.gid)
    port = free_port()
    proc = SandboxProcess(user, {
        "PYTHON_SANDBOX_AUTH_TOKEN": "bench",
        "PYTHON_SCHEDULER_URL": receiver.url,
        "PYTHON_SCHEDULER_AUTH_TOKEN": "bench",
        "PYTHON_SANDBOX_BIND": f"127.0.0.1:{port}",
        "PYTHON_SANDBOX_STATE_DIR": str(state),
        "PYTHON_SANDBOX_NODE_NAME": f"bench-{port}",
        "PYTHON_SANDBOX_LOG_LEVEL": "warning",
    }, port, state, token="bench")
    proc.start()
    return proc


def time_sandbox(proc: SandboxProcess, receiver: CallbackReceiver, script_id: int) -> float:
    started = time.perf_counter()
    response = proc.run(script_id, SCRIPT)
    assert response.status_code == 202, response.text
    result = receiver.result(script_id)
    elapsed = time.perf_counter() - started
    assert result["output"] == "hi\n", result
    return elapsed


def cli_argv(image: str, profile: str) -> list[str]:
    user = lookup_user(DEFAULT_USER)
    api = PodmanAPI(user.socket_url)
    enforcement = detect(api.client.info())
    api.close()
    limits = RunnerLimits(memory=1 << 30, pids=256, cpus=0, timeout=60, tmpfs_size=100 << 20)
    return user.command([
        "podman", "run", "--rm", "-i", "--read-only", "--network", "none", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--security-opt", f"seccomp={profile}",
        "--tmpfs", "/tmp:rw,nosuid,nodev,size=104857600", "--user", "1000:1000",
        "--ulimit", "nofile=1024:1024", "--log-driver", "none", image,
        *limits.entrypoint_args(enforcement),
    ])


def time_cli(argv: list[str]) -> float:
    user = lookup_user(DEFAULT_USER)
    job = json.dumps({"script": SCRIPT, "input": "", "env": {}}) + "\n"
    started = time.perf_counter()
    result = subprocess.run(argv, input=job, capture_output=True, text=True, env=user.env(), cwd="/", check=False)
    elapsed = time.perf_counter() - started
    assert result.stdout == "hi\n", result.stdout + result.stderr
    return elapsed


def time_floor(rootfs: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["chroot", str(rootfs), "/usr/bin/python3", "-c", "pass"], check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=40)
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
    proc = start_sandbox(receiver, work / "state")
    from sandbox.seccomp_profile import write_profile

    argv = cli_argv(image, str(write_profile(work)))
    samples: dict[str, list[float]] = {"sandbox": [], "podman run": [], "floor": []}
    try:
        for warm in range(3):  # warm caches for all three
            time_sandbox(proc, receiver, 10_000 + warm)
            time_cli(argv)
            time_floor(rootfs)
        for i in range(args.runs):
            samples["sandbox"].append(time_sandbox(proc, receiver, 20_000 + i))
            samples["podman run"].append(time_cli(argv))
            samples["floor"].append(time_floor(rootfs))
    finally:
        proc.stop()
        receiver.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)

    cli = median(samples["podman run"])
    rows = ["| way | p50 ms | p90 ms | p99 ms | podman run p50 / this p50 |", "|---|---|---|---|---|"]
    for name, values in samples.items():
        ms = [v * 1000 for v in values]
        rows.append(f"| {name} | {median(ms):.0f} | {percentile(ms, 90):.0f} | {percentile(ms, 99):.0f} | "
                    f"{cli / median(values):.2f}x |")
    table = "\n".join(rows)
    body = (f"Per-run overhead of `print('hi')`, {args.runs} runs of each, interleaved. {machine()}.\n"
            f"Command: `./dev bench sandbox_overhead --runs {args.runs}`. Image `{image}`.\n\n{table}\n")
    print(body)
    if not args.no_write:
        update_section("Sandbox: per-run overhead (cold path)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
