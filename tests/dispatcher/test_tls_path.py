"""The control plane over TLS with a CA made in the test: the real sandbox serving HTTPS and requiring client
certificates, the dispatcher verifying it and presenting one, the sandbox's callbacks to the scheduler's HTTPS."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scheduler.db import Store
from scheduler.nodes import Nodes
from tests.dispatcher.conftest import DispatcherProcess, SeaTableStub, enqueue, row, wait_for
from tests.scheduler.conftest import RunningServer
from tests.support.tls import Authority, authority


@pytest.fixture
def cas() -> Iterator[tuple[Authority, Authority]]:
    """Our CA and a stranger's, in a directory the sandbox user can read."""
    base = Path(tempfile.mkdtemp(prefix="tls-test-"))
    base.chmod(0o755)
    yield authority(base / "ca"), authority(base / "stranger", "stranger-ca")
    shutil.rmtree(base, ignore_errors=True)


def reason(nodes: Nodes, url: str) -> str:
    nodes.refresh()
    node = nodes.nodes[url]
    assert not node.ready, url
    return node.reason


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_whole_path_over_tls(
    backend: str,
    db_env: dict[str, str],
    store: Store,
    seatable: SeaTableStub,
    serve: Callable[..., RunningServer],
    sandbox_factory: Any,
    dispatchers: Callable[..., DispatcherProcess],
    cas: tuple[Authority, Authority],
) -> None:
    ca, stranger = cas
    scheduler_pair, node_pair, dispatcher_pair = ca.issue("scheduler"), ca.issue("sandbox"), ca.issue("dispatcher")
    server = serve({**db_env, "SEATABLE_SERVER_URL": seatable.url, "PYTHON_SCHEDULER_TLS_CERT": scheduler_pair.cert,
                    "PYTHON_SCHEDULER_TLS_KEY": scheduler_pair.key}, ca_bundle=ca.pem)
    assert server.url.startswith("https://localhost:")
    client = (dispatcher_pair.cert, dispatcher_pair.key)
    sandbox = sandbox_factory(
        tls_ca=ca.pem, client_cert=client,
        PYTHON_SCHEDULER_URL=server.url, PYTHON_SCHEDULER_CA_BUNDLE=ca.pem,
        PYTHON_SANDBOX_TLS_CERT=node_pair.cert, PYTHON_SANDBOX_TLS_KEY=node_pair.key,
        PYTHON_SANDBOX_TLS_CLIENT_CA=ca.pem,
    )  # fmt: skip
    port = sandbox.port

    good = Nodes((sandbox.url,), sandbox.token, verify=ca.pem, client_cert=client)
    good.refresh()
    assert good.nodes[sandbox.url].ready and good.nodes[sandbox.url].free == 4
    # What fails, fails with a clear reason in the dispatcher's log (and the node gets no run).
    assert "client certificate" in reason(Nodes((sandbox.url,), sandbox.token, verify=ca.pem), sandbox.url)
    assert "not signed by a trusted CA" in reason(
        Nodes((sandbox.url,), sandbox.token, verify=stranger.pem, client_cert=client), sandbox.url)
    wrong_name = f"https://127.0.0.1:{port}"
    assert "does not name this host" in reason(
        Nodes((wrong_name,), sandbox.token, verify=ca.pem, client_cert=client), wrong_name)
    plain = f"http://localhost:{port}"
    assert "https:// server behind an http:// URL" in reason(Nodes((plain,), sandbox.token), plain)

    [run_id] = enqueue(store, seatable.base, 1)
    dispatchers({
        **db_env,
        "SEATABLE_SERVER_URL": seatable.url,
        "PYTHON_SANDBOX_URLS": sandbox.url,
        "PYTHON_SANDBOX_AUTH_TOKEN": sandbox.token,
        "PYTHON_SANDBOX_CA_BUNDLE": ca.pem,
        "PYTHON_DISPATCH_TLS_CERT": dispatcher_pair.cert,
        "PYTHON_DISPATCH_TLS_KEY": dispatcher_pair.key,
    })  # fmt: skip
    wait_for(lambda: row(store, run_id)["state"] == "finished", 120, "the run to finish over TLS")
    done = row(store, run_id)
    assert done["success"] and "hello from the sandbox" in done["output"], done
    assert "SSLError" not in sandbox.log() and "Traceback" not in server.log()
