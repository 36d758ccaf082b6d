"""What ended a run, as one word: stored in script_log.outcome, counted in the metrics, drawn on the status page.

The sandbox reports its kind with each result (`outcome` in the result body, decided by what the host observed);
the scheduler writes its own kinds when it ends a run itself. Upstream's starter sends none: its results are
"success" or "failed" by their `success` field. Anything else a caller sends is "failed" (never a new label).
"""

from __future__ import annotations

SUCCESS = "success"
FAILED = "failed"  # the script exited with a non-zero code
TIME_LIMIT = "time_limit"
OUTPUT_LIMIT = "output_limit"
OUT_OF_MEMORY = "out_of_memory"
CPU_LIMIT = "cpu_limit"
KILLED_BY_SIGNAL = "killed_by_signal"
SANDBOX_ERROR = "sandbox_error"  # the sandbox could not run it, or refused the hand-off
SANDBOX_LOST = "sandbox_lost"
FETCH_FAILED = "fetch_failed"  # the script could not be fetched (task file or script URL)
RATE_LIMITED = "rate_limited"
NOT_STARTED = "not_started"  # queued past PYTHON_SCHEDULER_QUEUE_TIMEOUT

# Kinds a sandbox may report; the last two only the scheduler decides.
REPORTED = (
    SUCCESS,
    FAILED,
    TIME_LIMIT,
    OUTPUT_LIMIT,
    OUT_OF_MEMORY,
    CPU_LIMIT,
    KILLED_BY_SIGNAL,
    SANDBOX_ERROR,
    SANDBOX_LOST,
    FETCH_FAILED,
)
ALL = (*REPORTED, RATE_LIMITED, NOT_STARTED)
MAX_LENGTH = 20  # the column's width


def reported(outcome: str | None, success: bool) -> str:
    """The kind to store for a result: the sandbox's own when it is one we know, else success/failed."""
    if outcome in REPORTED and (outcome == SUCCESS) == success:
        return outcome
    return SUCCESS if success else FAILED
