"""Every text the scheduler's clients read, worded as upstream words it so SeaTable shows the same."""

FORBIDDEN = "Forbidden: the auth token is not correct."
FORBIDDEN_SHORT = "Forbidden"  # upstream's task-log endpoints say only this
PONG = "Pong"
BAD_REQUEST = "Bad request"
PARAMETERS_INVALID = "Parameters invalid"
LIMIT_EXCEEDED = "The number of runs exceeds the limit"
NOT_FOUND = "Not found"
INTERNAL_ERROR = "Internal server error"
BODY_TOO_LARGE = "Request body too large"
BODY_TOO_MANY_VALUES = "Request body too large: too many JSON values for this endpoint"
ORDER_BY_INVALID = "order_by invalid."
MONTH_INVALID = "month invalid."
USERNAME_OR_ORG_INVALID = "username or org_id invalid."
ORG_ID_INVALID = "org_id invalid."
SCRIPT_LOG_NOT_FOUND = "Script log not found"
SCRIPT_NOT_FOUND_ERROR = "Script not found"  # the callbacks' 404, as {"error_msg": ...}

# /admin/ endpoints answer with {"error": ...}
START_INVALID = "Invalid value for start parameter"
END_INVALID = "Invalid value for end parameter"
ORG_ID_PARAM_INVALID = "Invalid value for org_id parameter"
ORG_ID_REQUIRED = "org_id is required"
BASE_UUID_INVALID = "Invalid value for base_uuid parameter"
PAGE_NOT_INTEGER = "page must be an integer"
PAGE_NOT_POSITIVE = "page must be greater than 0"
PER_PAGE_NOT_INTEGER = "per_page must be an integer"
PER_PAGE_NOT_POSITIVE = "per_page must be greater than 0"
PER_PAGE_TOO_LARGE = "per_page cannot be greater than 1000"

# GET /health of the scheduler
HEALTH_OK = "ok"
HEALTH_UNHEALTHY = "unhealthy"

# Outputs stored on a run that ended without its own output.
TIMEOUT_OUTPUT = "The script's running time exceeded the limit and the execution was aborted."

# Outputs the dispatcher and the maintenance sweeps write on runs that ended without the sandbox's result.
RATE_LIMITED = "Running scripts too frequently in a short period of time"  # upstream's, word for word
FAIL_TO_GET_SCRIPT = "Fail to get script"  # upstream's; the reason follows after a colon
SCRIPT_NOT_FOUND = "Fail to get script: the script {script_name} does not exist in this base (404)"
SCRIPT_FETCH_FAILED = "Fail to get script: {reason}"
# The sandbox says "sandbox lost" in its own words (sandbox/texts.py); the scheduler's cases are its own.
SANDBOX_LOST = "sandbox lost: the sandbox node stopped answering about this run; its result is unknown"
SANDBOX_LOST_NODE_FORGOT = "sandbox lost: the sandbox node no longer knows this run after it started"
SANDBOX_LOST_NOT_RECORDED = (
    "sandbox lost: the sandbox node says the scheduler acknowledged this run's result, but no result was recorded"
)
SANDBOX_LOST_NO_RESULT = "sandbox lost: no result arrived within {seconds} s of the start"
SANDBOX_REJECTED = "sandbox error: the sandbox refused the run ({reason})"
RESULT_MALFORMED = "[the sandbox reported this run's result with invalid fields, so it is stored as failed: {problems}]"
QUEUE_TIMEOUT = "Not started: no sandbox had a free slot within {seconds} s"

# Callbacks refused for their run: {"error_msg": ..., "refused": why}; the sandbox takes them as final.
CALLBACK_SECRET_MISSING = "this callback needs the run's callback secret (Authorization: Token <secret>)"  # noqa: S105
CALLBACK_SECRET_WRONG = "the callback secret is not this run's: the run was not handed to this node"  # noqa: S105
CALLBACK_RUN_FINISHED = "this run has finished: its callbacks are no longer accepted"
CALLBACK_ALREADY_RUNNING = "this run is already running: a running callback is accepted once"
CALLBACK_NOT_HANDED_OFF = "this run was not handed to a sandbox: it cannot be running or have a result"
# Reported times the scheduler does not believe (the result is stored as failed, naming them).
STARTED_IN_FUTURE = "started_at: in the future"
STARTED_BEFORE_CREATED = "started_at: before the run was created"
DURATION_TOO_LONG = "spend_time: longer than the time since the run started"
