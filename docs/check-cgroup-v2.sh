#!/usr/bin/env bash
# Prove on this host that the runners' limits hold: run as root on a sandbox host after
# `seatable-sandbox host-setup` and `build-runner` (and, on systemd hosts, `install-systemd --enable`).
#
#   docs/check-cgroup-v2.sh [--user seatable-sandbox] [--venv /opt/seatable-pipeline/venv]
#
# Written for cgroup v2 hosts (the production target), where the sandbox user's manager must have the
# memory and pids controllers delegated (docs/deployment.md, "cgroup v2"); it checks that delegation,
# then runs real runners through `seatable-sandbox run-local`, which creates them exactly as the sandbox
# service does: memory hogs (anonymous memory, memfd, many processes) must end as "out of memory",
# a fork bomb must stop at the process limit, and other runs must not notice. On a cgroup v1 or hybrid
# host the same runs check the delegated v1 cgroups instead. Prints a report; exits 1 if a limit did not hold.
set -uo pipefail

USER_NAME=seatable-sandbox
VENV=/opt/seatable-pipeline/venv
while [ $# -gt 0 ]; do
    case "$1" in
        --user) USER_NAME=$2; shift 2 ;;
        --venv) VENV=$2; shift 2 ;;
        *) echo "usage: $0 [--user NAME] [--venv DIR]" >&2; exit 2 ;;
    esac
done
SANDBOX=$VENV/bin/seatable-sandbox
[ "$(id -u)" -eq 0 ] || { echo "run as root (run-local talks to $USER_NAME's Podman as root)" >&2; exit 2; }
[ -x "$SANDBOX" ] || { echo "$SANDBOX not found: install the pipeline or pass --venv" >&2; exit 2; }
uid=$(id -u "$USER_NAME") || exit 2

failures=0
report() { printf '%-34s %s\n' "$1" "$2"; }
fail() { report "$1" "FAILED: $2"; failures=$((failures + 1)); }

# --- what the host offers -------------------------------------------------------------------------
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    report "cgroup version" "v2"
    delegated=/sys/fs/cgroup/user.slice/user-$uid.slice/user@$uid.service/cgroup.controllers
    if [ -f "$delegated" ]; then
        controllers=$(cat "$delegated")
        report "delegated to $USER_NAME" "$controllers"
        for needed in memory pids; do
            case " $controllers " in *" $needed "*) ;; *) fail "controller $needed" "not delegated (Delegate= drop-in)";; esac
        done
        case " $controllers " in *" cpu "*) ;; *) report "controller cpu" "not delegated: no CPU limit";; esac
    else
        report "delegated to $USER_NAME" "no user@$uid.service cgroup (no systemd user manager?)"
    fi
else
    report "cgroup version" "v1 or hybrid: checking the delegated v1 cgroups instead"
fi
mechanism=$("$VENV/bin/python" -c '
import sys
from sandbox.host import lookup_user, podman_info
from sandbox.isolation import enforcement_of
print(enforcement_of(podman_info(lookup_user(sys.argv[1])))[0].mechanism)' "$USER_NAME") || exit 2
report "mechanism (as /health says)" "$mechanism"
case "$mechanism" in cgroup-v2|cgroup-v1-delegated) ;; *) fail "mechanism" "$mechanism: runs are not bounded by cgroups";; esac

# --- real runs ---------------------------------------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() {  # NAME EXPECTED_OUTCOME SCRIPT: one run-local run with a 128 MiB / 64 processes bound
    local name=$1 expected=$2 outcome
    printf '%s\n' "$3" > "$work/$name.py"
    outcome=$(PYTHON_RUNNER_CONTAINER_MEMORY=128m PYTHON_RUNNER_CONTAINER_PIDS=64 PYTHON_PROCESS_TIMEOUT=60 \
              PYTHON_RUNNER_TMPFS_MOUNT_SIZE_IN_BYTES=1073741824 PYTHON_RUNNER_NETWORK=none \
              "$SANDBOX" run-local --user "$USER_NAME" "$work/$name.py" 2>&1 >"$work/$name.out" | tail -n 1)
    case "$outcome" in
        *"$expected"*) report "$name" "ok (${outcome#--- })" ;;
        *) fail "$name" "${outcome:-no outcome} (expected $expected); output: $(tail -c 200 "$work/$name.out")" ;;
    esac
}
run "anonymous memory 3x the limit" "failed: out_of_memory" \
    "chunks = []
while True:
    chunks.append(b'x' * (16 << 20))"
run "memfd 3x the limit" "failed: out_of_memory" \
    "import os
fd = os.memfd_create('hog')
for _ in range(24):
    os.write(fd, b'x' * (16 << 20))"
run "8 processes, 3x the limit" "failed: out_of_memory" \
    "import os, time
for _ in range(8):
    if os.fork() == 0:
        block = b'x' * (48 << 20)
        time.sleep(60)
        os._exit(0)
for _ in range(8):
    os.wait()"
run "fork bomb, 64 processes" "succeeded: exited" \
    "import errno, os, time
n = 0
while True:
    try:
        pid = os.fork()
    except OSError as exc:
        print('stopped after', n, errno.errorcode[exc.errno])
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    n += 1
assert n < 64, n"
run "a run within the limits" "succeeded: exited" \
    "import os
fd = os.memfd_create('ok')
os.write(fd, b'x' * (40 << 20))
print('fine')"

echo
if [ "$failures" -eq 0 ]; then
    echo "all limits held ($mechanism)"
else
    echo "$failures check(s) failed"
    exit 1
fi
