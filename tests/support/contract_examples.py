"""Bodies the contract calls valid (pipeline_contract), drawn by schemathesis's generator, for agreement tests.

schemathesis draws from OpenAPI operations, so each message's closed schema (no field it does not name: what our
own code sends) becomes the body of a one-operation document; its public `as_strategy()` is the way in.
hypothesis-jsonschema would draw from a bare schema, but it no longer works with this hypothesis.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from pipeline_contract import Message

# Reproducible (derandomized) and without hypothesis's example database (nothing written into the checkout).
EXAMPLES = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
FEWER = settings(EXAMPLES, max_examples=10)  # for examples that each cost a round trip or a database write


def examples(message: Message) -> st.SearchStrategy[Any]:
    """Bodies valid under the message's closed schema.

    A top-level anyOf of required fields (the hand-off's script_url or script_content) is drawn as one schema per
    branch, the same set of bodies: drawn whole, most draws miss both and are filtered away (tens of seconds).
    """
    schema = message.closed().schema
    branches = schema.get("anyOf", [])
    if branches and all(set(branch) == {"required"} for branch in branches):
        rest = {key: value for key, value in schema.items() if key != "anyOf"}
        return st.one_of([_drawn({**rest, "required": [*rest.get("required", []), *branch["required"]]},
                                 message.name) for branch in branches])
    return _drawn(schema, message.name)


def _drawn(schema: dict[str, Any], name: str) -> st.SearchStrategy[Any]:
    document = {
        "openapi": "3.1.0",
        "info": {"title": f"contract: {name}", "version": "1"},
        "paths": {"/message": {"post": {
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": {"200": {"description": "read"}},
        }}},
    }
    operation = schemathesis.openapi.from_dict(document)["/message"]["POST"]
    return operation.as_strategy().map(lambda case: case.body)
