"""The contract module itself: its schemas, the errors it names, and the words both services must share.

The agreement tests proper, where each side's real code meets the other's, are `test_contract.py` in
tests/dispatcher, tests/sandbox and tests/scheduler.
"""

from __future__ import annotations

import signal

import pytest
from jsonschema import Draft202012Validator

from pipeline_config.variables import NETWORK_MODES
from pipeline_contract import ContractError
from pipeline_contract import schemas as contract
from pipeline_contract.validation import DIALECT
from sandbox import limits
from sandbox.driver import RunResult
from sandbox.resources.run import RunPython
from scheduler import nodes, outcomes
from scheduler.resources import callbacks
from scheduler.resources.callbacks import ResultCallback, RunningCallback
from scheduler.resources.common import MAX_ID

TOKEN = "secret-token-of-the-run-" + "x" * 40
SECRET = "c" * 43  # the run's callback secret, as callback_auth.issue() makes them


def test_every_message_is_a_draft_2020_12_schema_with_a_name_of_its_own() -> None:
    """(A Message does not check its schema when made: this is where they are checked.)"""
    assert len({m.name for m in contract.MESSAGES}) == len(contract.MESSAGES)
    for message in contract.MESSAGES:
        assert message.schema["$schema"] == DIALECT, message.name
        Draft202012Validator.check_schema(message.schema)
        Draft202012Validator.check_schema(message.closed().schema)
    Draft202012Validator.check_schema(callbacks._NAMES_A_RUN.schema)


def test_the_services_validate_with_the_contracts_own_schemas() -> None:
    assert RunPython.SCHEMA is contract.HANDOFF.schema
    assert RunningCallback.SCHEMA is contract.RUNNING_CALLBACK.schema
    assert ResultCallback.SCHEMA is contract.RESULT_CALLBACK.schema
    assert contract.MAX_RUN_ID == MAX_ID  # the scheduler's int(11) ids bound both sides


def _handoff(**fields: object) -> dict[str, object]:
    return {**fields, "callback_secret": SECRET}


BAD = [
    (_handoff(script_id="7", script_content="x", env={}), "script_id: must be of type integer"),
    (_handoff(script_id=2**31, script_content="x", env={}), "script_id: must be at most 2147483647"),
    (_handoff(script_id=7, env={}), "body: needs one of script_url, script_content"),
    (_handoff(script_id=7, script_url="file:///etc/passwd", env={}), "script_url: must be an http:// or https:// URL"),
    (_handoff(script_id=7, script_content="x", env={"A B": "1"}), "env: a key must match"),
    (_handoff(script_id=7, script_content="x", env={}, context_data=[1]),
     "context_data: must be of type object or string or null"),
    ([1, 2], "body: must be of type object"),
]


@pytest.mark.parametrize(("body", "error"), BAD, ids=[e for _, e in BAD])
def test_a_broken_hand_off_gets_one_line_naming_the_field(body: object, error: str) -> None:
    with pytest.raises(ContractError) as raised:
        contract.HANDOFF.check(body)
    assert str(raised.value).startswith(error) and "\n" not in str(raised.value)


def test_an_error_names_the_field_never_the_value() -> None:
    """An env value is the run's API token; an output can be megabytes: neither is copied into an error."""
    for env in ({"api_token": TOKEN + "\x00"}, {"api_token": TOKEN * 2000}):
        wrong = contract.HANDOFF.problems({"script_id": 7, "script_content": "x", "env": env,
                                          "callback_secret": SECRET})
        assert wrong and wrong[0].startswith("env.api_token: ") and "secret" not in " ".join(wrong)
    huge = contract.RESULT_CALLBACK.problems({"script_id": 7, "output": ["x" * 100_000]})
    assert huge == ["output: must be of type string or null"]


def test_closed_refuses_what_the_contract_does_not_name_open_accepts_it() -> None:
    """Both services accept unknown fields (upstream's starter sends task_log_id); our own code sends none."""
    body = {"script_id": 3, "success": True, "task_log_id": 3}
    assert contract.RESULT_CALLBACK.is_valid(body)
    assert contract.RESULT_CALLBACK.closed().problems(body) == [
        "body: has fields the contract does not know: 'task_log_id'"]
    # Operator detail inside /health stays open; its top level is closed.
    health = {"status": "ok", "problems": [], "node": "n", "slots": {"total": 1, "busy": 0, "free": 1},
              "limits": {"memory": "x", "pids": "x", "cpu": "x", "mechanism": "rlimit", "more": 1},
              "isolation": {"mechanism": "rlimit", "runner_uids": {}}, "egress": {"mode": "none", "more": 1}}
    assert contract.HEALTH.closed().problems(health) == []
    assert contract.HEALTH.closed().problems({**health, "new": 1}) != []


def test_both_sides_use_the_contracts_words() -> None:
    """States, outcome kinds and enums that one side writes and the other reads."""
    assert set(nodes._STATES) == set(contract.RUN_STATES)
    assert {limits.CGROUP_V2, limits.CGROUP_V1_DELEGATED, limits.RLIMIT} == set(contract.LIMIT_MECHANISMS)
    assert contract.HEALTH.schema["properties"]["egress"]["properties"]["mode"]["enum"] == list(NETWORK_MODES)
    # Every kind the sandbox can report is one the scheduler stores as such (an unknown one would read "failed").
    observed = [RunResult(code, "", 0.0, 0.0, how) for how, code in (
        ("exited", 0), ("exited", 1), ("timeout", None), ("output_limit", None), ("out_of_memory", 137),
        ("signal", 128 + signal.SIGXCPU), ("signal", 137), ("error", None), ("lost", None), ("fetch_failed", None))]
    kinds = {result.kind for result in observed}
    assert kinds == set(outcomes.REPORTED)
    for result in observed:
        assert contract.RESULT_CALLBACK.closed().problems(result.body(7)) == [], result
        assert len(result.kind) <= contract.RESULT_CALLBACK.schema["properties"]["outcome"]["maxLength"]
