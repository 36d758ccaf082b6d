"""Texts users and operators read: outcomes in a run's output, errors, health problems.

Tests import these; keep them stable.
"""

# --- outcomes, appended to a run's output ---------------------------------------------------------
OUT_OF_MEMORY = "out of memory: the script needed more than {limit} and was stopped"
TIME_LIMIT = "time limit of {seconds} s exceeded: the script was stopped"
CPU_LIMIT = "CPU time limit of {seconds} s exceeded: the script was stopped"
OUTPUT_LIMIT = ("output limit reached: only the first {limit} characters of the output were kept; "
                "the script ran on to its end")
BODY_LIMIT = ("output cut to {kept} characters: the result must fit the scheduler's limit of {limit} bytes "
              "(PYTHON_SCHEDULER_MAX_BODY_BYTES)")
KILLED_BY_SIGNAL = "killed by signal {signal}"
SANDBOX_ERROR = "sandbox error: {reason}"
NO_EXIT_RECORD = "the runner ended without reporting how the script ended (container exit code {code})"
SANDBOX_LOST = "sandbox lost: the sandbox service restarted while the script ran; it was stopped"
PODMAN_LOST = ("sandbox lost: Podman unreachable until past the run's time limit; how the script ended is "
               "unknown (its container is removed once Podman is back)")
OUTPUT_GAP = ("part of the output is missing: the connection to the runner was cut (Podman restarted?) and "
              "its log had been started over")
RESULT_REFUSED = ("result refused by the scheduler (HTTP {status} on /script-result/): the script's output "
                  "could not be stored")
# Upstream's texts, kept word for word because SeaTable users know them.
SCRIPT_URL_MISSING = "Script URL is missing"
FAIL_TO_GET_SCRIPT = "Fail to get script"
FETCH_REFUSED = "Fail to get script: its URL leads where runners may not connect ({reason})"

# --- API answers -----------------------------------------------------------------------------------
ALREADY_HERE = "script_id {script_id} is already here"
NOT_HERE = "script_id {script_id} is not here"
SLOTS_BUSY = "every slot is busy"

# --- health problems (the reason a node refuses runs) ----------------------------------------------
PODMAN_UNREACHABLE = "podman unreachable: {detail}"
IMAGE_MISSING = "runner image {image} is missing; run 'seatable-sandbox build-runner'"
OUTBOX_UNUSABLE = "outbox unusable: {detail}"
OUTBOX_FULL = ("outbox full: {size} of results wait for the scheduler (PYTHON_SANDBOX_OUTBOX_MAX_BYTES={cap}); "
               "new runs are refused until it takes them")
DISK_LOW = "disk almost full: {free} free where the outbox lives"
CHECK_STALLED = "health check has not finished for {seconds:.0f} s (Podman not answering?)"
STARTING = "starting"

# --- callback delivery errors, logged once per cause and shown in /health --------------------------
DELIVERY_HINTS = {
    401: "refused without a reason the sandbox knows: is PYTHON_SCHEDULER_URL this pipeline's scheduler?",
    403: "refused without a reason the sandbox knows: is PYTHON_SCHEDULER_URL this pipeline's scheduler?",
    404: "the scheduler does not know the path or the run: check PYTHON_SCHEDULER_URL",
}
DELIVERY_SERVER_ERROR = "HTTP {status}: the scheduler failed; results wait in the outbox"
DELIVERY_UNREACHABLE = "the scheduler is unreachable ({error}) at PYTHON_SCHEDULER_URL; results wait in the outbox"
DELIVERY_OTHER = "HTTP {status}: an answer the sandbox does not expect; results wait in the outbox"


def notice(text: str) -> str:
    """How an outcome text is appended to the script's own output."""
    return f"\n[{text}]\n"


def delivery_cause(status: int | None, error: str = "") -> str:
    """One line naming why a callback was not acknowledged, the same for every attempt with that cause."""
    if status is None:
        return DELIVERY_UNREACHABLE.format(error=error)
    if status in DELIVERY_HINTS:
        return f"HTTP {status}: {DELIVERY_HINTS[status]}"
    if status >= 500:
        return DELIVERY_SERVER_ERROR.format(status=status)
    return DELIVERY_OTHER.format(status=status)

# Logged once at start when the sandbox's environment still holds SeaTable's secret.
UNUSED_SEATABLE_SECRET = (
    "PYTHON_SCHEDULER_AUTH_TOKEN is set but not used: a sandbox needs no SeaTable secret (each run's callbacks "  # noqa: S105
    "carry a secret of their own); remove it from this host's environment")
