"""Outcome texts users read in a run's output. Tests import these; keep them stable."""

OUT_OF_MEMORY = "out of memory: the script needed more than {limit} and was stopped"
TIME_LIMIT = "time limit of {seconds} s exceeded: the script was stopped"
OUTPUT_LIMIT = "output limit reached: output cut at {limit} characters and the script was stopped"
KILLED_BY_SIGNAL = "killed by signal {signal}"
SANDBOX_ERROR = "sandbox error: {reason}"
SANDBOX_LOST = "sandbox lost: the sandbox service restarted while the script ran; it was stopped"
# Upstream's texts, kept word for word because SeaTable users know them.
SCRIPT_URL_MISSING = "Script URL is missing"
FAIL_TO_GET_SCRIPT = "Fail to get script"


def notice(text: str) -> str:
    """How an outcome text is appended to the script's own output."""
    return f"\n[{text}]\n"
