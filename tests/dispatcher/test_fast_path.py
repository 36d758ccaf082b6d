"""The fast path of a run: the API wakes the dispatcher, the dispatcher hands the script's content over.

The wake-up is a hint (the poll stays the fallback), so the tests make the poll too slow to matter: a run is
handed off within the test's patience only if the wake-up arrived. The content hand-off keeps the sandbox's own
download as the fallback: when the dispatcher's download may have spent the one-time URL, the sandbox gets a
fresh one; when it provably did not (connect refused), the same one.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pony.orm import db_session

from scheduler import callback_auth
from scheduler import dispatcher as dispatcher_module
from scheduler.config import Config
from scheduler.db import Store
from scheduler.dispatcher import Dispatcher
from scheduler.nodes import Nodes
from scheduler.seatable import SCRIPT_MAX_BYTES, SeaTable
from scheduler.wakeup import WakeListener, WakeSignal
from tests.dispatcher.conftest import SANDBOX_TOKEN, SCRIPT, SCRIPT_CONTENT, TOKEN, SeaTableStub, enqueue, wait_for
from tests.dispatcher.test_dispatch import dispatch_env
from tests.scheduler.conftest import start_scheduler
from tests.support.stub_sandbox import StubSandbox

BOTH = pytest.mark.parametrize("backend", ["sqlite", "mariadb"], indirect=True)


def _dispatcher(db_env: dict[str, str], seatable: SeaTableStub, store: Store, node: StubSandbox,
                **extra: str) -> Dispatcher:
    config = Config.from_env(dispatch_env(db_env, seatable, node, **extra))
    return Dispatcher(config, store, SeaTable(config.seatable_server_url, config.auth_token),
                      Nodes(config.sandbox_urls, SANDBOX_TOKEN))


def carries_the_runs_secret(store: Store, run_id: int, body: dict[str, object]) -> None:
    """The hand-off's callback secret is the one whose digest the database keeps (issue 20, with the content)."""
    with db_session:
        [stored] = store.db.select("SELECT callback_secret_hash FROM script_log WHERE id = $i", {"i": run_id})
    secret = body["callback_secret"]
    assert isinstance(secret, str) and stored == callback_auth.digest(secret)


@pytest.fixture
def wake_dir(tmp_path: Path) -> Path:
    return tmp_path / "wake"


@BOTH
def test_a_run_posted_to_the_api_wakes_the_dispatcher(
    backend: str, db_env: dict[str, str], store: Store, seatable: SeaTableStub, node: StubSandbox,
    wake_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dispatcher_module, "IDLE_POLL", 600.0)  # the poll alone would not find the run in time
    api = start_scheduler({**db_env, "PYTHON_DISPATCH_WAKE_DIR": str(wake_dir)}, tmp_path / "api.log")
    dispatcher = _dispatcher(db_env, seatable, store, node, PYTHON_DISPATCH_WAKE_DIR=str(wake_dir))
    dispatcher.wake = WakeListener(wake_dir)
    assert dispatcher.wake.active
    loop = threading.Thread(target=dispatcher.run, daemon=True)
    loop.start()
    try:
        for _ in range(3):  # each run is found by its own wake-up: the dispatcher is asleep before each
            response = requests.post(f"{api.url}/run-script/", headers={"Authorization": f"Token {TOKEN}"}, json={
                "dtable_uuid": str(uuid.UUID(seatable.base)), "script_name": SCRIPT, "owner": "alice@auth.local",
                "org_id": 7, "scripts_running_limit": -1, "context_data": None}, timeout=10)
            assert response.status_code == 200, response.text
            run_id = response.json()["script_id"]
            wait_for(lambda: node.accepted[run_id] == 1, 30, f"run {run_id} handed off after its wake-up")  # noqa: B023
    finally:
        dispatcher.stop()
        loop.join(30)
        api.process.terminate()
        api.process.wait(30)
    assert not loop.is_alive()  # stop() ends a 600 s sleep at once
    assert not list(wake_dir.glob("*.sock"))  # the dispatcher removed its socket


@BOTH
def test_the_dispatcher_hands_over_the_script_content_and_downloads_it_once(
    backend: str, db_env: dict[str, str], store: Store, seatable: SeaTableStub, node: StubSandbox
) -> None:
    [run_id] = enqueue(store, seatable.base, 1)
    assert _dispatcher(db_env, seatable, store, node).step()
    body = node.bodies[run_id]
    assert body["script_content"] == SCRIPT_CONTENT and "script_url" not in body
    assert body["env"]["api_token"]
    carries_the_runs_secret(store, run_id, body)
    assert [u.fetch_count for u in seatable.server.seatable.script_urls()] == [1]


def test_with_the_download_off_the_sandbox_gets_the_url(
    db_env: dict[str, str], store: Store, seatable: SeaTableStub, node: StubSandbox
) -> None:
    [run_id] = enqueue(store, seatable.base, 1)
    assert _dispatcher(db_env, seatable, store, node, PYTHON_DISPATCH_FETCH_SCRIPT="false").step()
    body = node.bodies[run_id]
    assert "script_content" not in body
    [url] = seatable.server.seatable.script_urls()
    assert body["script_url"] == url.url and url.fetch_count == 0  # the sandbox downloads it


def test_a_download_that_may_have_spent_the_url_hands_the_sandbox_a_fresh_one(
    db_env: dict[str, str], store: Store, seatable: SeaTableStub, node: StubSandbox
) -> None:
    seatable.server.seatable.add_script(seatable.base, "big.py", "#" * SCRIPT_MAX_BYTES + "\nprint(1)\n")
    [run_id] = enqueue(store, seatable.base, 1, script_name="big.py")
    assert _dispatcher(db_env, seatable, store, node).step()
    first, second = seatable.server.seatable.script_urls(script_name="big.py")
    assert first.fetch_count == 1  # the dispatcher's download, over the sandbox's limit: the URL is spent
    assert node.bodies[run_id]["script_url"] == second.url and second.fetch_count == 0
    carries_the_runs_secret(store, run_id, node.bodies[run_id])


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def hangs_up() -> Iterator[str]:
    """Reads the request, closes without answering: the request arrived, the URL may be spent."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/seafhttp/files/t/x.py"
    listener.close()


def test_only_a_refused_connect_leaves_the_url_unspent(closed_port: int, hangs_up: str) -> None:
    seatable = SeaTable("http://127.0.0.1:1", "token")
    refused = seatable.download_script(f"http://127.0.0.1:{closed_port}/seafhttp/files/t/x.py")
    assert refused.content is None and not refused.spent
    cut = seatable.download_script(hangs_up)
    assert cut.content is None and cut.spent


def test_a_refused_download_hands_the_same_url_on_and_pauses_downloads(
    db_env: dict[str, str], store: Store, seatable: SeaTableStub, node: StubSandbox, closed_port: int
) -> None:
    """A file server the scheduler's host cannot reach (upstream's ALTERNATIVE_FILE_SERVER_ROOT case)."""
    dispatcher = _dispatcher(db_env, seatable, store, node)
    real = dispatcher.seatable.task_file

    def unreachable(dtable_uuid: str, script_name: str):  # type: ignore[no-untyped-def]
        task = real(dtable_uuid, script_name)
        return type(task)(task.script_url.replace(seatable.url, f"http://127.0.0.1:{closed_port}"),
                          task.temp_api_token)

    dispatcher.seatable.task_file = unreachable  # type: ignore[method-assign]
    ids = enqueue(store, seatable.base, 2)
    wait_for(lambda: dispatcher.step() is not None and all(node.accepted[i] for i in ids), 30, "both handed off")
    urls = [node.bodies[i].get("script_url", "") for i in ids]
    assert all(u.startswith(f"http://127.0.0.1:{closed_port}/") for u in urls)
    assert all("script_content" not in node.bodies[i] for i in ids)


def test_the_wake_directory_must_be_private(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    assert not WakeListener(shared).active and WakeSignal(shared).directory is None
    link = tmp_path / "link"
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    link.symlink_to(private)
    assert not WakeListener(link).active and WakeSignal(link).directory is None


def test_a_wake_up_ends_the_wait_and_a_dead_listener_is_cleaned_up(wake_dir: Path) -> None:
    listener = WakeListener(wake_dir)
    signal = WakeSignal(wake_dir)
    assert listener.active and (wake_dir.stat().st_mode & 0o777) == 0o700
    assert not listener.wait(0.01)  # nothing sent yet
    for _ in range(5):
        signal.notify()
    assert listener.wait(30)
    assert not listener.wait(0.01)  # all five were consumed by the one wake-up
    stale = wake_dir / "0-dead.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(stale))
    dead.close()  # its process died without removing the file
    signal.notify()
    assert not stale.exists() and listener.path is not None and listener.path.exists()
    listener.close()
    assert not list(wake_dir.iterdir())
