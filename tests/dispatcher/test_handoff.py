"""What a hand-off sends; which POST failures count as "never arrived"; resets retried at once; readiness."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest
from pony.orm import db_session

from scheduler import runs
from scheduler.config import Config
from scheduler.db import Store
from scheduler.dispatcher import Dispatcher
from scheduler.nodes import Nodes, Sent
from scheduler.seatable import SeaTable
from tests.dispatcher.conftest import (
    SANDBOX_TOKEN,
    DispatcherProcess,
    SeaTableStub,
    enqueue,
    free_port,
    row,
    wait_for,
)
from tests.dispatcher.test_dispatch import dispatch_env
from tests.scheduler.conftest import RunningServer
from tests.support.stub_sandbox import StubSandbox

BOTH = pytest.mark.parametrize("backend", ["sqlite", "mariadb"], indirect=True)


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


@pytest.fixture
def resets_once_then_dies() -> Iterator[str]:
    """A node that reads one request, resets the connection and stops listening (connections then refused)."""
    listener = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"

    def serve() -> None:
        conn, _ = listener.accept()
        listener.close()
        conn.recv(65536)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield url
    thread.join(timeout=5)


BODY = {"script_id": 1, "script_content": "print(1)", "env": {}, "callback_secret": "s" * 43}


def test_a_post_that_may_have_arrived_is_uncertain_a_refused_connect_is_not_sent(hangs_up: str) -> None:
    refused = f"http://127.0.0.1:{free_port()}"
    nodes = Nodes((hangs_up, refused), SANDBOX_TOKEN)
    uncertain = nodes.post(hangs_up, BODY)
    assert uncertain.sent is Sent.UNCERTAIN and uncertain.attempts > 1  # retried before giving up
    not_sent = nodes.post(refused, BODY)
    assert not_sent.sent is Sent.NOT_SENT and not_sent.attempts == 1  # may go to another node at once
    assert nodes.capacity() == 0  # both are skipped for a while


def test_a_refused_connect_after_a_reset_does_not_prove_anything(resets_once_then_dies: str) -> None:
    """The first POST may have been accepted before the reset: later refusals leave the run to the node."""
    nodes = Nodes((resets_once_then_dies,), SANDBOX_TOKEN)
    outcome = nodes.post(resets_once_then_dies, BODY)
    assert outcome.sent is Sent.UNCERTAIN and outcome.attempts > 1


@pytest.mark.parametrize("mode", ["before", "after"])
def test_a_reset_is_retried_at_once_on_the_same_node(mode: str) -> None:
    with StubSandbox(SANDBOX_TOKEN) as node:
        nodes = Nodes((node.url,), SANDBOX_TOKEN)
        node.reset_next(mode, 2)
        outcome = nodes.post(node.url, BODY)
        assert (outcome.sent, outcome.attempts) == (Sent.ACCEPTED, 3)
        # "after": the first attempt was accepted; the retries were answered 409 "already here".
        assert node.posts[1] == 3 and node.accepted[1] == 1
        assert outcome.reason == ("HTTP 409" if mode == "after" else "HTTP 202")


def test_the_node_answers_503_or_429_before_anything_was_sent_not_sent() -> None:
    with StubSandbox(SANDBOX_TOKEN) as node:
        nodes = Nodes((node.url,), SANDBOX_TOKEN)
        nodes.refresh()
        assert nodes.capacity() > 0
        node.refuse_posts = True
        assert nodes.post(node.url, BODY).sent is Sent.NOT_SENT
        assert nodes.capacity() == 0 and nodes.take() is None  # skipped until /ready is asked again
        node.refuse_posts = False

        def refreshed() -> bool:
            nodes.refresh()
            return nodes.capacity() > 0

        wait_for(refreshed, 10, "the next /ready poll")
        node.busy = True
        assert nodes.post(node.url, BODY).sent is Sent.NOT_SENT
        assert node.accepted[1] == 0


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


def _in_process(
    db_env: dict[str, str], seatable: SeaTableStub, store: Store, *nodes: StubSandbox, **extra: str
) -> Dispatcher:
    config = Config.from_env(dispatch_env(db_env, seatable, *nodes, **extra))
    seatable_client = SeaTable(config.seatable_server_url, config.auth_token)
    return Dispatcher(config, store, seatable_client, Nodes(config.sandbox_urls, SANDBOX_TOKEN))


def _settle(dispatcher: Dispatcher, done: Callable[[], bool], what: str) -> None:
    wait_for(lambda: dispatcher.step() is not None and done(), 30, what, interval=0.05)


@BOTH
def test_an_unhealthy_node_gets_nothing_until_it_recovers(
    backend: str, db_env: dict[str, str], store: Store, seatable: SeaTableStub
) -> None:
    with StubSandbox(SANDBOX_TOKEN) as sick, StubSandbox(SANDBOX_TOKEN) as well:
        sick.unhealthy = True
        dispatcher = _in_process(db_env, seatable, store, sick, well)
        first = enqueue(store, seatable.base, 6)
        _settle(dispatcher, lambda: all(well.accepted[i] for i in first), "runs on the healthy node")
        assert not sick.posts  # /ready said 503: not one POST went there
        well.unhealthy, sick.unhealthy = True, False
        second = enqueue(store, seatable.base, 6)
        _settle(dispatcher, lambda: all(sick.accepted[i] for i in second), "runs on the recovered node")
        # Until its next poll the dispatcher may still think it ready: a POST then meets a 503 (not accepted).
        assert not any(well.accepted[i] for i in second)
        assert all(row(store, i)["attempt"] == 1 for i in first)  # nothing of the first batch was released


@BOTH
def test_a_503_to_a_post_sends_the_run_to_another_node_at_once(
    backend: str, db_env: dict[str, str], store: Store, seatable: SeaTableStub
) -> None:
    with StubSandbox(SANDBOX_TOKEN) as refusing, StubSandbox(SANDBOX_TOKEN) as other:
        refusing.refuse_posts = True  # its /ready still says 200: the node turned unhealthy a moment ago
        dispatcher = _in_process(db_env, seatable, store, refusing, other)
        ids = enqueue(store, seatable.base, 4)
        _settle(dispatcher, lambda: all(other.accepted[i] for i in ids), "every run on the other node")
        assert not refusing.accepted and sum(refusing.posts.values()) >= 1
        assert all(row(store, i)["sandbox_node"] == other.url for i in ids)


@BOTH
def test_only_nodes_that_sign_with_their_own_token_get_runs(
    backend: str, db_env: dict[str, str], store: Store, seatable: SeaTableStub
) -> None:
    """Issue 20: a fake node reporting 1,000 free slots on an unauthenticated /health received 51 of 51 runs.

    Here a fake node (its answers signed with another token), an unsigned one (no /ready: an older sandbox or
    upstream's starter) and the real node with 2 slots: every run goes to the real node, and the fake ones
    never even see a token (no POST reaches them, /ready carries none)."""
    with (
        StubSandbox("not-the-node-token", slots=1000) as fake,
        StubSandbox(SANDBOX_TOKEN, without_ready=True, slots=1000) as unsigned,
        StubSandbox(SANDBOX_TOKEN, slots=2) as real,
    ):
        dispatcher = _in_process(db_env, seatable, store, fake, unsigned, real)
        ids = enqueue(store, seatable.base, 5)
        _settle(dispatcher, lambda: len(real.accepted) == 2, "two runs on the real node (its two free slots)")
        for _ in range(5):
            dispatcher.step()
        assert not fake.posts and not unsigned.posts
        assert not dispatcher.nodes.nodes[fake.url].ready and "not signed" in dispatcher.nodes.nodes[fake.url].reason
        assert sum(row(store, i)["dispatched_at"] is None for i in ids) == 3


# Which resets each run's POSTs meet (the first 16 runs; the other 24 meet none): 20 resets, every order of two.
RESET_PLAN: list[tuple[str, ...]] = [("before",)] * 6 + [("after",)] * 6 + [
    ("before", "after"), ("after", "after"), ("after", "before"), ("before", "before"),
]


def expected_answers(resets: tuple[str, ...]) -> list[str]:
    """The stub's answers to one run's POSTs when each reset is retried at once on the same node: a reset
    "after" is the one acceptance (202); every later POST finds the run already there (409)."""
    answers: list[str] = []
    here = False
    for mode in resets:
        answers.append(f"reset after {409 if here else 202}" if mode == "after" else "reset before")
        here = here or mode == "after"
    return [*answers, "409" if here else "202"]


@BOTH
def test_no_run_waits_for_the_sweep_because_of_resets(
    backend: str,
    db_env: dict[str, str],
    store: Store,
    seatable: SeaTableStub,
    serve: Callable[[dict[str, str]], RunningServer],
    dispatchers: Callable[..., DispatcherProcess],
) -> None:
    """Half the hand-offs end in a reset, before or after the node accepted. With a one-hour hand-off window,
    a run that needed the sweeper could not finish within this test: every run finishes, each ran once.

    A run accepted before its reset reports its result at once, so it may be finished while the dispatcher
    still waits to retry its POST (the 409 that settles the hand-off): the POSTs are counted once the
    dispatcher has exited, which it does only after every hand-off in hand is settled."""
    server = serve({**db_env, "SEATABLE_SERVER_URL": seatable.url})
    with StubSandbox(SANDBOX_TOKEN, scheduler_url=server.url) as node:
        ids = enqueue(store, seatable.base, 40)
        plan = dict(zip(ids[: len(RESET_PLAN)], RESET_PLAN, strict=True))
        for run_id, resets in plan.items():
            node.reset_run(run_id, *resets)
        proc = dispatchers(dispatch_env(db_env, seatable, node, PYTHON_DISPATCH_HANDOFF_SECS="3600"), "--maintain")
        wait_for(lambda: all(row(store, i)["state"] == "finished" for i in ids), 120, "every run to finish")
        assert proc.terminate() == 0  # every hand-off in hand settled: no POST can still be on its way
        log = proc.log()
        assert "back in the queue" not in log and "uncertain" not in log and "Traceback" not in log, log
        assert not any(node.planned.values())  # every planned reset happened
        for run_id in ids:
            resets = plan.get(run_id, ())
            answers = [answer for script_id, answer in node.answers if script_id == run_id]
            assert answers == expected_answers(resets), (run_id, resets)  # each reset retried once, at once
            if resets:  # the dispatcher saw each reset and retried: accepted on the attempt after the last
                assert f"run {run_id} to {node.url} accepted on attempt {len(resets) + 1} ({answers[-1]})" in log
            done = row(store, run_id)
            assert done["output"] == f"stub ran {run_id}\n" and done["attempt"] == 1, done
        assert set(node.accepted.values()) == {1} and sorted(node.accepted) == sorted(ids)
        assert sum(node.posts.values()) == len(ids) + sum(map(len, RESET_PLAN))  # 40 + 20: one retry per reset
