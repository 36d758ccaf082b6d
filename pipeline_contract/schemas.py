"""The scheduler <-> sandbox contract: every body one side sends the other, as JSON schemas (draft 2020-12).

Dispatcher -> sandbox: the hand-off (POST /function/run-python) and its answers; GET /ready, /health and
/function/runs/{id}. Sandbox -> scheduler: the running and result callbacks and their answers. Both services
validate with these, both OpenAPI documents show them, and the test stubs build and check their messages with
them. The schemas are open (an unknown field is ignored, as upstream's starter sends task_log_id); `closed()`
holds our own code to exactly these fields.

Where the two sides disagreed before this module, the schema says which was right:
- script_id is at most 2**31 - 1, the scheduler's (int(11) columns): a node that accepted a larger id could never
  deliver its result (the callbacks refuse it).
- context_data is an object, a string or null, the sandbox's: the dispatcher sends any other JSON value (a list,
  a number) as its JSON text, which reaches the script unchanged.
"""

from __future__ import annotations

from typing import Any

from pipeline_config.variables import NETWORK_MODES
from pipeline_contract.validation import DIALECT, HTTP_URL, NO_NUL, Message

MAX_RUN_ID = 2**31 - 1  # script_log.id is int(11) upstream and here
SCRIPT_MAX_BYTES = 1 << 20  # a script, as UTF-8 (the sandbox counts the bytes; a schema can count characters)
ENV_NAME = "^[A-Za-z_][A-Za-z0-9_]{0,127}$"
RUN_STATES = ("running", "reporting", "done")  # executing; result not yet acknowledged; acknowledged (tombstone)
LIMIT_MECHANISMS = ("cgroup-v2", "cgroup-v1-delegated", "rlimit")
HEALTH_STATUSES = ("ok", "unhealthy")

RUN_ID: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": MAX_RUN_ID}
EPOCH: dict[str, Any] = {"type": ["number", "null"], "minimum": 0, "maximum": 1e11}
OPEN: dict[str, Any] = {"type": "object", "additionalProperties": True}  # operator detail, not the contract


def _message(name: str, description: str, schema: dict[str, Any]) -> Message:
    return Message(name, {"$schema": DIALECT, "title": name, "description": description, **schema})


def _error(name: str, description: str, **properties: Any) -> Message:
    return _message(name, description, {"type": "object", "required": ["error"],
                                        "properties": {"error": {"type": "string"}, **properties}})


# --- dispatcher -> sandbox --------------------------------------------------------------------------------

HANDOFF = _message("hand-off", "POST /function/run-python: one run, idempotent by script_id.", {
    "type": "object",
    "required": ["script_id", "env", "callback_secret"],
    "properties": {
        "script_id": RUN_ID,
        "script_url": {"type": "string", "minLength": 1, "maxLength": 8192, "pattern": HTTP_URL, **NO_NUL,
                       "description": "one-time URL the sandbox downloads the script from (no auth)"},
        "script_content": {"type": "string", "maxLength": SCRIPT_MAX_BYTES, **NO_NUL,
                           "description": f"the script itself (at most {SCRIPT_MAX_BYTES} bytes as UTF-8); "
                           "used instead of script_url when both are sent"},
        "dtable_uuid": {"type": "string", "maxLength": 64, "description": "for the sandbox's log lines only"},
        "script_name": {"type": "string", "maxLength": 255, "description": "for the sandbox's log lines only"},
        "env": {
            "type": "object",
            "maxProperties": 64,
            "propertyNames": {"pattern": ENV_NAME},
            "additionalProperties": {"type": "string", "maxLength": 65536, **NO_NUL},
            "description": "the runner's environment: dtable_web_url and api_token (upstream's env.list)",
        },
        "context_data": {"type": ["object", "string", "null"],
                         "description": "upstream's context (a JSON object), or text; reaches the script on stdin"},
        "callback_secret": {"type": "string", "pattern": "^[A-Za-z0-9_-]{32,128}$",
                            "description": "the run's own secret for its two callbacks, issued at hand-off"},
    },
    "anyOf": [{"required": ["script_url"]}, {"required": ["script_content"]}],
})
HANDOFF_ACCEPTED = _message("hand-off accepted", "202: the node holds the run now.", {
    "type": "object", "required": ["accepted"], "properties": {"accepted": {"const": True}}})
HANDOFF_DUPLICATE = _error("hand-off duplicate", "409: the node holds or held this script_id (counts as accepted; "
                           "it never runs twice).", state={"enum": list(RUN_STATES)})
ERROR = _error("error", "Any refusal of the sandbox (400, 403, 404, 413, 415, 429, 503): the reason in words.")

SLOTS: dict[str, Any] = {
    "type": "object",
    "required": ["total", "busy", "free"],
    "properties": {name: {"type": "integer", "minimum": 0} for name in ("total", "busy", "free")},
}
READY = _message("ready", "GET /ready 200: the node takes runs, this many now (the dispatcher's poll).", {
    "type": "object", "required": ["slots"], "properties": {"node": {"type": "string"}, "slots": SLOTS}})
NOT_READY = _error("not ready", "GET /ready 503: the node takes no runs now, and why.", node={"type": "string"})
HEALTH = _message("health", "GET /health (200 ok, 503 unhealthy): the node's report for operators; a dispatcher "
                  "reads its slots only from a node without /ready.", {
    "type": "object",
    "required": ["status", "problems", "node", "slots", "limits", "isolation", "egress"],
    "properties": {
        "status": {"enum": list(HEALTH_STATUSES)},
        "problems": {"type": "array", "items": {"type": "string"}},
        "node": {"type": "string"},
        "slots": SLOTS,
        "image": {"type": "string"},
        "runner": {"anyOf": [OPEN, {"type": "null"}], "description": "what the runner image offers (probed)"},
        "limits": {**OPEN, "required": ["memory", "pids", "cpu", "mechanism"], "properties": {
            "mechanism": {"enum": list(LIMIT_MECHANISMS), "description": "how run limits are enforced on this node"}}},
        "isolation": {**OPEN, "required": ["mechanism", "runner_uids"],
                      "description": "the runners' host identities (one uid per live runner) and cgroups"},
        "podman_warnings": {"type": "array", "items": {"type": "string"}},
        "outbox": {**OPEN, "description": "callbacks waiting for the scheduler, and delivery errors"},
        "runs_finished": {"type": "integer", "minimum": 0},
        "warm_pool": OPEN,
        "egress": {**OPEN, "required": ["mode"], "properties": {"mode": {"enum": list(NETWORK_MODES)}},
                   "description": "the runners' network: the proxy's counters (seatable) or the rules' (open)"},
    },
})
RUN_STATE = _message("run state", "GET /function/runs/{id} 200: the node holds the run, or held it (done).", {
    "type": "object", "required": ["script_id", "state"],
    "properties": {"script_id": RUN_ID, "state": {"enum": list(RUN_STATES)}}})
NOT_HERE = _error("not here", "GET /function/runs/{id} 404: never accepted here (within the tombstone time).")

# The node signs its answers to a request that carries a challenge; the proof is a header, so
# the bodies above do not change. In OpenAPI's terms, for /ready, /health and /function/runs/{id}:
NODE_CHALLENGE = {"name": "X-Node-Challenge", "in": "header", "required": False,
                  "description": "a fresh random challenge; the answer then carries X-Node-Proof",
                  "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,128}$"}}
NODE_PROOF = {"X-Node-Proof": {"required": False, "schema": {"type": "string"},
                               "description": "HMAC-SHA256 of the challenge, status and body, "
                               "one per token the node accepts, comma-separated"}}

# --- sandbox -> scheduler ---------------------------------------------------------------------------------

RUNNING_CALLBACK = _message("running callback", "POST /script-running-callback/: the run started.", {
    "type": "object", "required": ["script_id"], "properties": {"script_id": RUN_ID, "started_at": EPOCH}})
RESULT_CALLBACK = _message("result callback", "POST /script-result/: the run ended (upstream's body, plus outcome "
                           "and lost, which upstream's scheduler ignores).", {
    "type": "object",
    "required": ["script_id"],
    "properties": {
        "script_id": RUN_ID,
        "success": {"type": ["boolean", "null"]},
        "return_code": {"type": ["integer", "null"], "minimum": -(2**31), "maximum": MAX_RUN_ID},
        "output": {"type": ["string", "null"]},
        "started_at": EPOCH,
        "spend_time": {"type": ["number", "null"], "minimum": 0, "maximum": 1e9},
        "lost": {"type": ["boolean", "null"], "description": "the sandbox lost the run (its restart): not counted"},
        "outcome": {"type": ["string", "null"], "maxLength": 64,
                    "description": "what ended the run, as the sandbox observed it; an unknown word counts as "
                    "success or failed"},
    },
})
CALLBACK_ACK = _message("callback acknowledged", "200: recorded, or the run had already finished.", {
    "type": "object", "required": ["success"], "properties": {"success": {"const": True}}})
CALLBACK_NOT_FOUND = _message("callback for no run", "404: no run with this script_id.", {
    "type": "object", "required": ["error_msg"], "properties": {"error_msg": {"type": "string"}}})
# 403/409: refused for its run on purpose (a replay, a wrong secret or state): sending it again
# cannot change the answer.
CALLBACK_REFUSED = _message("callback refused", "403/409: refused for this run; final.", {
    "type": "object", "required": ["error_msg", "refused"],
    "properties": {"error_msg": {"type": "string"}, "refused": {"type": "string"}}})

MESSAGES: tuple[Message, ...] = (
    HANDOFF, HANDOFF_ACCEPTED, HANDOFF_DUPLICATE, ERROR, READY, NOT_READY, HEALTH, RUN_STATE, NOT_HERE,
    RUNNING_CALLBACK, RESULT_CALLBACK, CALLBACK_ACK, CALLBACK_NOT_FOUND, CALLBACK_REFUSED,
)
