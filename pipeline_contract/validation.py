"""A message of the contract: its JSON schema (draft 2020-12), checked once, and the errors it names.

An error names the field and what it must be, never the value it found: a hand-off's env holds the run's API
token and a result's output can be megabytes, and the texts end up in answers, logs and a run's output.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

DIALECT = "https://json-schema.org/draft/2020-12/schema"
MAX_PROBLEMS = 5
MAX_PROBLEM_CHARS = 160
# Rules with a meaning a reader knows better than the expression (schemas.py uses these exact forms). NUL is
# refused by "not" rather than by a pattern of every other character: the same strings, and schemathesis draws
# examples of it seven times faster.
NUL = "\\u0000"
NO_NUL: dict[str, Any] = {"not": {"pattern": NUL}}
HTTP_URL = "^https?://"
PATTERN_MEANINGS = {HTTP_URL: "must be an http:// or https:// URL"}


class ContractError(ValueError):
    """A message that breaks the contract; str() is one line naming the field ("script_id: must be ...")."""


def _types(value: Any) -> str:
    names = value if isinstance(value, list) else [value]
    return " or ".join(str(name) for name in names)


def _keys(error: jsonschema.ValidationError) -> str:
    """The offending keys of an additionalProperties/propertyNames error (key names only, at most three)."""
    instance = error.instance if isinstance(error.instance, dict) else {}
    known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
    extra = [key for key in instance if key not in known][:3]
    return ", ".join(repr(key[:40]) for key in extra)


def phrase(error: jsonschema.ValidationError) -> str:
    """What the field must be, in words that hold no part of the value that was sent."""
    kind, expected = error.validator, error.validator_value
    if kind == "type":
        return f"must be of type {_types(expected)}"
    if kind == "required":
        return error.message  # "'env' is a required property": the name comes from the schema
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        word = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "more than",
                "exclusiveMaximum": "less than"}[str(kind)]
        return f"must be {word} {expected}"
    if kind == "minLength":
        return f"must be at least {expected} characters long"
    if kind == "maxLength":
        return f"must be at most {expected} characters long"
    if kind == "pattern":
        return PATTERN_MEANINGS.get(str(expected), f"must match {expected}")
    if kind == "enum":
        return f"must be one of {', '.join(map(repr, expected))}"
    if kind == "const":
        return f"must be {expected!r}"
    if kind == "maxProperties":
        return f"must have at most {expected} entries"
    if kind == "additionalProperties":
        return f"has fields the contract does not know: {_keys(error)}"
    if kind == "not" and expected == NO_NUL["not"]:
        return "must not contain a NUL byte"
    if kind == "anyOf" and all(set(branch) == {"required"} for branch in expected):
        names = [name for branch in expected for name in branch["required"]]
        return f"needs one of {', '.join(names)}"
    return f"does not satisfy {kind}"


def where(error: jsonschema.ValidationError) -> str:
    """The field's path ("env.api_token"), or "body" for the message as a whole."""
    return ".".join(str(part) for part in error.absolute_path) or "body"


@dataclass(frozen=True)
class Message:
    """One message between the scheduler and a sandbox node (a body either side sends)."""

    name: str
    schema: dict[str, Any]
    validator: Draft202012Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Not checked against the metaschema here (30 ms at every service start): tests/unit/test_contract.py does.
        object.__setattr__(self, "validator", Draft202012Validator(self.schema))

    def problems(self, data: Any, limit: int = MAX_PROBLEMS) -> list[str]:
        """What is wrong, one short line per field ("success: must be of type boolean or null"), sorted by field."""
        found = []
        for error in sorted(self.validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]):
            # A propertyNames error is reported at the object, about one of its keys.
            key = "a key " if "propertyNames" in error.absolute_schema_path else ""
            text = f"{where(error)}: {key}{phrase(error)}"
            found.append(text if len(text) <= MAX_PROBLEM_CHARS else text[: MAX_PROBLEM_CHARS - 3] + "...")
        return found[:limit]

    def is_valid(self, data: Any) -> bool:
        return bool(self.validator.is_valid(data))

    def check(self, data: Any) -> None:
        """Raise ContractError naming the first wrong field (the answer a service gives to a bad message)."""
        wrong = self.problems(data, limit=1)
        if wrong:
            raise ContractError(wrong[0])

    def closed(self) -> Message:
        """The same message with no field beyond those the schema names (what our own code must send).

        The services accept unknown fields (an upstream starter sends task_log_id; an older node ignores a newer
        field); the agreement test holds both sides to this form, so a field added on one side only fails it.
        """
        return Message(f"{self.name} (closed)", closed(self.schema))


def closed(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy in which every object schema that lists properties allows no others (unless it says otherwise)."""
    result: dict[str, Any] = copy.deepcopy(dict(schema))
    pending: list[Any] = [result]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return result
