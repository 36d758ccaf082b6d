"""What a hand-off sends, and which POST failures count as "never arrived"."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from pony.orm import db_session

from scheduler import runs
from scheduler.config import Config
from scheduler.db import Store
from scheduler.dispatcher import Dispatcher
from scheduler.nodes import Nodes, Sent
from scheduler.seatable import SeaTable
from tests.dispatcher.conftest import SANDBOX_TOKEN, SeaTableStub, free_port, row
from tests.dispatcher.test_dispatch import dispatch_env
from tests.support.stub_sandbox import StubSandbox


@pytest.fixture
def hangs_up() -> Iterator[str]:
    """A node that reads the request and closes the connection without answering."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.recv(65536)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    listener.close()


def test_a_post_that_may_have_arrived_is_uncertain_a_refused_connect_is_not_sent(hangs_up: str) -> None:
    refused = f"http://127.0.0.1:{free_port()}"
    nodes = Nodes((hangs_up, refused), SANDBOX_TOKEN)
    body = {"script_id": 1, "script_content": "print(1)", "env": {}}
    assert nodes.post(hangs_up, body).sent is Sent.UNCERTAIN
    assert nodes.post(refused, body).sent is Sent.NOT_SENT
    assert nodes.capacity() == 0  # both are skipped for a while


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"], indirect=True)
def test_a_draft_is_handed_off_with_its_own_code_and_token_which_are_then_erased(
    backend: str, db_env: dict[str, str], store: Store, seatable: SeaTableStub, node: StubSandbox
) -> None:
    config = Config.from_env(dispatch_env(db_env, seatable, node))
    dispatcher = Dispatcher(
        config, store, SeaTable(seatable.url, config.auth_token), Nodes(config.sandbox_urls, SANDBOX_TOKEN)
    )
    draft = runs.NewRun(
        seatable.base,
        "draft.py",
        "alice@auth.local",
        7,
        {"row": {"_id": "r1"}},
        "draft",
        script_content="print('draft')",
        draft_api_token="draft-jwt",
    )
    run_id = runs.create_run(store, draft)
    assert dispatcher.step()
    body = node.bodies[run_id]
    assert body["script_content"] == "print('draft')" and "script_url" not in body
    assert body["env"] == {"dtable_web_url": seatable.url, "api_token": "draft-jwt"}
    assert body["context_data"] == {"row": {"_id": "r1"}}
    with db_session:
        [(content, token)] = store.db.select(
            "SELECT script_content, draft_api_token FROM script_log WHERE id = $i", {"i": run_id}
        )
    assert content is None and token is None
    assert row(store, run_id)["sandbox_node"] == node.url
