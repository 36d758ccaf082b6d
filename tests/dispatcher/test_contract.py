"""The dispatcher's side of the contract (pipeline_contract), where its real code meets a sandbox's.

The hand-offs the real dispatcher builds keep the closed contract (a field added on the dispatcher's side only
fails here) and are accepted by the real sandbox's parser, its Falcon app in process. Every /ready, /health and
/function/runs/{id} answer the contract calls valid (drawn by schemathesis) is read as the contract says, without
a complaint; one that breaks it is logged once, naming the field, and read as before.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from falcon import testing
from hypothesis import given

from pipeline_contract import schemas as contract
from sandbox import node_proof
from sandbox.app import create_app
from scheduler import runs
from scheduler.config import Config
from scheduler.db import Store
from scheduler.dispatcher import Dispatcher
from scheduler.nodes import DEFAULT_SLOTS, Nodes, Status
from scheduler.seatable import SeaTable
from tests.dispatcher.conftest import SANDBOX_TOKEN, SCRIPT, SeaTableStub, wait_for
from tests.dispatcher.test_dispatch import dispatch_env
from tests.sandbox.test_api_validation import AUTH, TOKEN, FakeNode, FakeService
from tests.support.contract_examples import FEWER, examples
from tests.support.stub_sandbox import StubSandbox

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
# What SeaTable may send as a run's context: the contract's object, string or null, and any other JSON value.
CONTEXTS: list[Any] = [{"row": {"_id": "r1"}}, "plain text", None, [1, 2], 5, True]
COMPLAINT = "breaks the contract"


def dispatched(db_env: dict[str, str], seatable: SeaTableStub, store: Store, node: StubSandbox,
               ids: list[int], **extra: str) -> None:
    config = Config.from_env(dispatch_env(db_env, seatable, node, **extra))
    dispatcher = Dispatcher(config, store, SeaTable(config.seatable_server_url, config.auth_token),
                            Nodes(config.sandbox_urls, SANDBOX_TOKEN))
    wait_for(lambda: dispatcher.step() is not None and all(i in node.bodies for i in ids), 30, "hand-offs")


def test_the_dispatchers_hand_offs_are_what_the_sandbox_accepts(
    backend: str, db_env: dict[str, str], store: Store, seatable: SeaTableStub, node: StubSandbox
) -> None:
    def new(context: Any, **draft: str) -> int:
        return runs.create_run(store, runs.NewRun(seatable.base, "draft.py" if draft else SCRIPT,
                                                  "alice@auth.local", 7, context, "manualy", **draft))

    saved = [new(context) for context in CONTEXTS]
    draft = new({"row": {"_id": "d"}}, script_content="print('draft')", draft_api_token="draft-jwt")
    dispatched(db_env, seatable, store, node, [*saved, draft])  # the dispatcher downloads: script_content
    by_url = [new({"row": {"_id": "u"}})]
    dispatched(db_env, seatable, store, node, by_url, PYTHON_DISPATCH_FETCH_SCRIPT="false")  # script_url

    assert node.accepted == {i: 1 for i in [*saved, draft, *by_url]}  # the stub refuses a broken hand-off
    assert "script_url" in node.bodies[by_url[0]] and "script_content" in node.bodies[draft]
    # A context the sandbox would refuse as such goes as its JSON text (before: "sandbox rejected the run").
    assert [node.bodies[i]["context_data"] for i in saved] == [
        {"row": {"_id": "r1"}}, "plain text", None, "[1, 2]", "5", "true"]
    service, sandbox_node = FakeService(), FakeNode()
    sandbox = testing.TestClient(create_app([TOKEN], service, sandbox_node.health, sandbox_node.ready))
    for run_id, body in node.bodies.items():
        assert contract.HANDOFF.closed().problems(body) == [], body
        answer = sandbox.simulate_post("/function/run-python", json=body, headers=AUTH)
        assert answer.status_code == 202, answer.text
        request = service.submitted[-1]
        assert (request.script_id, request.env, request.context_data) == (run_id, body["env"], body["context_data"])


class Answers:
    """A node whose every answer is set by the test: {path: (status, body)}; anything else 404."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, Any]] = {}
        answers = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = answers.answers.get(self.path, (404, {"error": "Not Found"}))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                challenge = self.headers.get(node_proof.CHALLENGE_HEADER)
                # answers as the node holding SANDBOX_TOKEN signs them
                if challenge is not None and node_proof.valid_challenge(challenge):
                    self.send_header(node_proof.PROOF_HEADER, node_proof.sign([SANDBOX_TOKEN], challenge, status,
                                                                               data))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()


@pytest.fixture
def answers() -> Iterator[Answers]:
    node = Answers()
    yield node
    node.server.shutdown()
    node.server.server_close()


def capacity(answers: Answers, **paths: tuple[int, Any]) -> tuple[int, str]:
    answers.answers = {f"/{path}": answer for path, answer in paths.items()}
    nodes = Nodes((answers.url,), SANDBOX_TOKEN)
    nodes.refresh()
    return nodes.capacity(), nodes.nodes[answers.url].reason


def test_every_node_answer_the_contract_calls_valid_is_read_as_it_says(
    backend: str, answers: Answers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="scheduler.nodes")

    @FEWER
    @given(body=examples(contract.READY))
    def ready(body: dict[str, Any]) -> None:
        assert capacity(answers, ready=(200, body)) == (body["slots"]["free"], "")

    @FEWER
    @given(body=examples(contract.NOT_READY))
    def not_ready(body: dict[str, Any]) -> None:
        free, reason = capacity(answers, ready=(503, body))
        assert free == 0 and reason.startswith("unhealthy: HTTP 503: ")

    @FEWER
    @given(body=examples(contract.RUN_STATE))
    def run_state(body: dict[str, Any]) -> None:
        answers.answers = {"/function/runs/7": (200, body)}
        assert Nodes((answers.url,), SANDBOX_TOKEN).status(answers.url, 7) is Status(body["state"])

    @FEWER
    @given(body=examples(contract.NOT_HERE))
    def not_here(body: dict[str, Any]) -> None:
        answers.answers = {"/function/runs/7": (404, body)}
        assert Nodes((answers.url,), SANDBOX_TOKEN).status(answers.url, 7) is Status.NEVER

    for read in (ready, not_ready, run_state, not_here):
        read()
    assert [r.getMessage() for r in caplog.records if COMPLAINT in r.getMessage()] == []


def test_an_answer_that_breaks_the_contract_is_logged_once_naming_the_field(
    backend: str, answers: Answers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="scheduler.nodes")
    answers.answers = {"/ready": (200, {"node": "n", "slots": {"total": 4, "busy": 0, "free": "3"}})}
    nodes = Nodes((answers.url,), SANDBOX_TOKEN)
    for _ in range(3):
        nodes.nodes[answers.url].check_at = 0.0
        nodes.refresh()
    assert nodes.capacity() == DEFAULT_SLOTS  # read as before: a node without a count of its own
    complaints = [r.getMessage() for r in caplog.records if COMPLAINT in r.getMessage()]
    assert complaints == [f"sandbox node {answers.url}: its /ready answer (HTTP 200) breaks the contract: "
                          "slots.free: must be of type integer"]
    answers.answers = {"/function/runs/7": (200, {"script_id": 7, "state": "paused"})}
    assert nodes.status(answers.url, 7) is Status.RUNNING  # an unknown state still means the node holds it
    assert "state: must be one of 'running', 'reporting', 'done'" in caplog.records[-1].getMessage()
