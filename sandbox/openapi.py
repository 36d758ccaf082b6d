"""The sandbox's API as an OpenAPI 3.1 document, served at GET /openapi.json.

Every body the dispatcher and the scheduler exchange with a node is the contract's own schema (pipeline_contract):
what the service validates and what its peers send is what this says. Errors are JSON objects {"error": "..."};
the dispatcher reads the status code, operators read the text.
"""

from __future__ import annotations

from typing import Any

from pipeline_contract import schemas as contract

ERROR = contract.ERROR.schema
TOKEN: list[dict[str, list[str]]] = [{"token": []}]


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": _json(ERROR), **extra}


def _text(description: str, text: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"text/plain": {"schema": {"type": "string"}, "example": text}}}


FORBIDDEN = _error("The token is missing or wrong.")
HEALTH = contract.HEALTH.schema


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
                "requestBody": {"required": True, "content": _json(contract.HANDOFF.schema)},
                "responses": {
                    "202": {"description": "Accepted.", "content": _json(contract.HANDOFF_ACCEPTED.schema)},
                    "400": _error("The body is not a run (schema, NUL bytes, a script over 1 MiB)."),
                    "403": FORBIDDEN,
                    "409": {"description": "This script_id is or was here (running, reporting, done): accepted "
                            "before; it never runs twice.", "content": _json(contract.HANDOFF_DUPLICATE.schema)},
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
                                "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}},
                               contract.NODE_CHALLENGE],
                "responses": {
                    "200": {"description": "Held here, or held and acknowledged (done).",
                            "content": _json(contract.RUN_STATE.schema), "headers": contract.NODE_PROOF},
                    "403": FORBIDDEN,
                    "404": {"description": "Never accepted here (within the tombstone time).",
                            "content": _json(contract.NOT_HERE.schema), "headers": contract.NODE_PROOF},
                },
            }},
            "/ping/": {"get": {"summary": "Liveness (upstream's starter path)",
                               "responses": {"200": _text("Pong", "Pong")}}},
            "/": {"get": {"summary": "Liveness", "responses": {"200": _text("Pong", "Pong")}}},
            "/_/health": {"get": {"summary": "upstream's starter probe", "responses": {"200": _text("OK", "OK")}}},
            "/health": {"get": {"summary": "Slots, image, limits and how they are enforced, runner identities, "
                                           "outbox, warm pool, network (no auth)",
                                "parameters": [contract.NODE_CHALLENGE],
                                "responses": {
                                    "200": {"description": "Healthy.", "content": _json(HEALTH),
                                            "headers": contract.NODE_PROOF},
                                    "503": {"description": "Unhealthy: `problems` say why.",
                                            "content": _json(HEALTH), "headers": contract.NODE_PROOF},
                                }}},
            "/ready": {"get": {"summary": "The dispatcher's cheap poll: can the node take runs, how many (no auth)",
                               "parameters": [contract.NODE_CHALLENGE],
                               "responses": {
                                   "200": {"description": "Takes runs.", "content": _json(contract.READY.schema),
                                           "headers": contract.NODE_PROOF},
                                   "503": {"description": "Takes no runs now, and why.",
                                           "content": _json(contract.NOT_READY.schema),
                                           "headers": contract.NODE_PROOF},
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
