"""The sandbox keeps the contract (pipeline_contract) on both of its sides.

It accepts every hand-off the contract calls valid (in process, the Falcon app with a fake run service), and a
real sandbox answers /ready, /health, /function/runs/{id} and the hand-off with exactly the contract's fields.
Its callbacks are checked by the receiver (tests.support.podman), which fails any test they break it in.
"""

from __future__ import annotations

from typing import Any

from falcon import testing
from hypothesis import given

from pipeline_contract import schemas as contract
from sandbox.app import create_app
from tests.sandbox.test_api_validation import AUTH, TOKEN, FakeNode, FakeService
from tests.support.contract_examples import EXAMPLES, examples
from tests.support.podman import CallbackReceiver, SandboxProcess


@EXAMPLES
@given(body=examples(contract.HANDOFF))
def test_every_hand_off_the_contract_calls_valid_is_accepted(body: dict[str, Any]) -> None:
    service, node = FakeService(), FakeNode()
    client = testing.TestClient(create_app([TOKEN], service, node.health, node.ready))
    response = client.simulate_post("/function/run-python", json=body, headers=AUTH)
    content = body.get("script_content")
    if content is not None and len(content.encode()) > contract.SCRIPT_MAX_BYTES:
        # The one rule a schema cannot say: the limit counts the script's UTF-8 bytes, the schema its characters.
        assert response.status_code == 400 and "bytes" in response.json["error"]
        return
    assert response.status_code == 202, response.text
    assert contract.HANDOFF_ACCEPTED.closed().problems(response.json) == []
    [request] = service.submitted
    assert (request.script_id, request.env, request.context_data) == (
        body["script_id"], body["env"], body.get("context_data"))
    assert request.script_content == content
    assert request.script_url == (body.get("script_url") if content is None else None)


def test_a_real_sandbox_answers_with_the_contracts_fields(sandbox: SandboxProcess,
                                                          receiver: CallbackReceiver) -> None:
    code, ready = sandbox.ready()
    assert code == 200 and contract.READY.closed().problems(ready) == []
    assert contract.HEALTH.closed().problems(sandbox.health()) == []
    code, missing = sandbox.state(9301)
    assert code == 404 and contract.NOT_HERE.closed().problems(missing) == []

    accepted = sandbox.post({"script_id": 9301, "script_content": "print('contract')", "env": {},
                             "context_data": {"row": {"_id": "r"}}})
    assert accepted.status_code == 202 and contract.HANDOFF_ACCEPTED.closed().problems(accepted.json()) == []
    code, state = sandbox.state(9301)
    assert code == 200 and contract.RUN_STATE.closed().problems(state) == []
    again = sandbox.post({"script_id": 9301, "script_content": "print('twice')", "env": {}})
    assert again.status_code == 409 and contract.HANDOFF_DUPLICATE.closed().problems(again.json()) == []
    assert receiver.result(9301)["output"] == "contract\n"
    refused = sandbox.post({"script_id": 2**31, "script_content": "x", "env": {}})
    assert refused.status_code == 400 and refused.json() == {"error": "script_id: must be at most 2147483647"}
