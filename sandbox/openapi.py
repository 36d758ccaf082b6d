"""The sandbox's API as an OpenAPI 3.1 document, served at GET /openapi.json.

The run request's body is the resource's own JSON schema (what the service validates is what this says). Errors
are JSON objects {"error": "..."}; the dispatcher reads the status code, operators read the text.
"""

from __future__ import annotations

import copy
from typing import Any

from sandbox import node_proof
from sandbox.config import NETWORK_MODES
from sandbox.limits import CGROUP_V1_DELEGATED, CGROUP_V2, RLIMIT
from sandbox.resources.run import RunPython

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
TOKEN: list[dict[str, list[str]]] = [{"token": []}]


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": _json(ERROR), **extra}


def _text(description: str, text: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"text/plain": {"schema": {"type": "string"}, "example": text}}}


FORBIDDEN = _error("The token is missing or wrong.")
# The dispatcher believes a node's answers only when signed (sandbox.node_proof): it sends a fresh challenge,
# the node answers with an HMAC per accepted token over the challenge, the status and the body.
CHALLENGE = {"name": node_proof.CHALLENGE_HEADER, "in": "header", "required": False,
             "description": "A fresh random challenge (16 to 128 of A-Z a-z 0-9 _ -); the answer then carries its "
             "proof. Any other value is ignored (no proof).",
             "schema": {"type": "string"}}
PROOF = {node_proof.PROOF_HEADER: {
    "description": "With a challenge: HMAC-SHA256 (hex) of the answer, one per token this node accepts "
    "(comma-separated while a token is rotated), keyed by that token",
    "schema": {"type": "string"}}}


def _signed(response: dict[str, Any]) -> dict[str, Any]:
    return {**response, "headers": {**response.get("headers", {}), **PROOF}}
HEALTH = {
    "type": "object", "required": ["status", "problems", "node", "slots", "limits", "isolation", "egress"],
    "properties": {
        "status": {"enum": ["ok", "unhealthy"]},
        "problems": {"type": "array", "items": {"type": "string"}},
        "node": {"type": "string"},
        "limits": {"type": "object", "required": ["memory", "pids", "cpu", "mechanism"], "properties": {
            "mechanism": {"enum": [CGROUP_V2, CGROUP_V1_DELEGATED, RLIMIT],
                          "description": "how run limits are enforced on this node"}}},
        "isolation": {"type": "object", "required": ["mechanism", "runner_uids"],
                      "description": "the runners' host identities (one uid per live runner) and cgroups"},
        "egress": {"type": "object", "required": ["mode"], "properties": {"mode": {"enum": list(NETWORK_MODES)}},
                   "description": "the runners' network: the proxy's counters (seatable) or the rules' (open)"},
    },
}


def _run_request() -> dict[str, Any]:
    schema: dict[str, Any] = copy.deepcopy(RunPython.SCHEMA)
    # NUL bytes are refused in the script, its URL and the environment (400).
    for name in ("script_url", "script_content"):
        schema["properties"][name]["pattern"] = schema["properties"][name].get("pattern", "") or "^[^\\u0000]*$"
    schema["properties"]["env"]["additionalProperties"]["pattern"] = "^[^\\u0000]*$"
    schema["properties"]["context_data"]["description"] = "upstream's context (a JSON object), or text"
    return schema


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SeaTable Python sandbox",
            "version": "1",
            "description": "One sandbox node: accepts runs from the dispatcher (upstream's starter path), runs each "
            "in a single-use rootless container, and reports to the scheduler's callbacks.",
        },
        "components": {"securitySchemes": {
            "token": {"type": "apiKey", "in": "header", "name": "Authorization",
                      "description": "`Token <PYTHON_SANDBOX_AUTH_TOKEN>` (or one of "
                      "PYTHON_SANDBOX_PREVIOUS_AUTH_TOKENS while it is rotated)"},
            "metrics": {"type": "http", "scheme": "bearer",
                        "description": "PYTHON_SANDBOX_METRICS_TOKEN, else PYTHON_SANDBOX_AUTH_TOKEN"},
        }},
        "paths": {
            "/function/run-python": {"post": {
                "summary": "Accept one run; its result goes to the scheduler's /script-result/",
                "security": TOKEN,
                "requestBody": {"required": True, "content": _json(_run_request())},
                "responses": {
                    "202": {"description": "Accepted.", "content": _json({
                        "type": "object", "required": ["accepted"], "properties": {"accepted": {"const": True}}})},
                    "400": _error("The body is not a run (schema, NUL bytes, a script over 1 MiB)."),
                    "403": FORBIDDEN,
                    "409": {"description": "This script_id is or was here (running, reporting, done): accepted "
                            "before; it never runs twice.", "content": _json({
                                "type": "object", "required": ["error"],
                                "properties": {"error": {"type": "string"}, "state": {"type": "string"}}})},
                    "413": _error("The body is over 4 MiB."),
                    "415": _error("The body is not JSON."),
                    "429": _error("Every slot is busy; try again after Retry-After seconds.",
                                  headers={"Retry-After": {"schema": {"type": "string"}}}),
                    "503": _error("The node is unhealthy (Podman, image, outbox, disk): not accepted."),
                },
            }},
            "/function/runs/{script_id}": {"get": {
                "summary": "Whether this node holds a run (the dispatcher's sweep asks)",
                "security": TOKEN,
                "parameters": [{"name": "script_id", "in": "path", "required": True,
                                "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}}, CHALLENGE],
                "responses": {
                    "200": _signed({"description": "Held here, or held and acknowledged (done).", "content": _json({
                        "type": "object", "required": ["script_id", "state"],
                        "properties": {"script_id": {"type": "integer"}, "state": {"type": "string"}}})}),
                    "403": FORBIDDEN,
                    "404": _signed(_error("Never accepted here (within the tombstone time).")),
                },
            }},
            "/ping/": {"get": {"summary": "Liveness (upstream's starter path)",
                               "responses": {"200": _text("Pong", "Pong")}}},
            "/": {"get": {"summary": "Liveness", "responses": {"200": _text("Pong", "Pong")}}},
            "/_/health": {"get": {"summary": "upstream's starter probe", "responses": {"200": _text("OK", "OK")}}},
            "/health": {"get": {"summary": "Slots, image, limits and how they are enforced, runner identities, "
                                           "outbox, warm pool, network (no auth)",
                                "parameters": [CHALLENGE],
                                "responses": {
                                    "200": _signed({"description": "Healthy.", "content": _json(HEALTH)}),
                                    "503": _signed({"description": "Unhealthy: `problems` say why.",
                                                    "content": _json(HEALTH)}),
                                }}},
            "/ready": {"get": {"summary": "The dispatcher's cheap poll: can the node take runs, how many (no auth)",
                               "parameters": [CHALLENGE],
                               "responses": {
                                   "200": _signed({"description": "Takes runs.", "content": _json({
                                       "type": "object", "required": ["slots"],
                                       "properties": {"node": {"type": "string"}, "slots": {"type": "object"}}})}),
                                   "503": _signed(_error("Takes no runs now, and why.")),
                               }}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics of this node", "security": [{"metrics": []}],
                "responses": {
                    "200": {"description": "Text exposition format (OpenMetrics when asked for).", "content": {
                        "text/plain": {"schema": {"type": "string"}},
                        "application/openmetrics-text": {"schema": {"type": "string"}}}},
                    "403": _error("The metrics token is missing or wrong."),
                }}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3.1",
                                                            "content": _json({"type": "object"})}}}},
        },
    }
