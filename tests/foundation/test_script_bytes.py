"""Script files as Python reads them (issue 15 item 8): the runner compiles the file's bytes, as `python index.py`
does upstream, so a UTF-8 byte-order mark and a PEP 263 coding declaration work, and invalid UTF-8 without one is
Python's own SyntaxError. Each case is checked against the runner's interpreter reading the same bytes as a file."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.foundation.conftest import RunFn
from tests.support.podman import CallbackReceiver, SandboxProcess

BOM = b"\xef\xbb\xbfprint('bom ok', __file__)\n"
LATIN_1 = b"# -*- coding: latin-1 -*-\ns = 'caf\xe9'\nprint(s, len(s), ascii(s))\n"
INVALID_UTF8 = b"print('before')\n# caf\xe9 without a declaration\nprint('never')\n"
PYTHON_SAYS = ("SyntaxError: Non-UTF-8 code starting with '\\xe9' in file /scripts/index.py on line 2, "
               "but no encoding declared; see https://peps.python.org/pep-0263/ for details")


def as_a_file(script: bytes) -> str:
    """A script that runs `python3 index.py` on the same bytes in the runner, as upstream's runner does."""
    return ("import subprocess, sys\n"
            f"open('/tmp/as_file.py', 'wb').write({script!r})\n"
            "r = subprocess.run([sys.executable, '/tmp/as_file.py'], capture_output=True, text=True)\n"
            "print(r.returncode, r.stdout.replace('/tmp/as_file.py', '/scripts/index.py'), "
            "r.stderr.strip().splitlines()[-1].replace('/tmp/as_file.py', '/scripts/index.py') if r.stderr else '')\n")


def test_a_utf8_bom_runs(run_script: RunFn) -> None:
    result = run_script(BOM)
    assert (result.return_code, result.output) == (0, "bom ok /scripts/index.py\n")


def test_a_latin1_declaration_decodes_as_latin1(run_script: RunFn) -> None:
    result = run_script(LATIN_1)
    assert (result.return_code, result.output) == (0, "café 4 'caf\\xe9'\n")
    reference = run_script(as_a_file(LATIN_1))
    assert reference.output.split(" ", 1)[1].strip() == result.output.strip()


def test_invalid_utf8_without_declaration_is_pythons_own_syntax_error(run_script: RunFn) -> None:
    result = run_script(INVALID_UTF8)
    assert result.return_code == 1
    assert result.output == PYTHON_SAYS + "\n"  # nothing ran: the file does not compile
    reference = run_script(as_a_file(INVALID_UTF8))
    assert reference.output.strip() == "1  " + PYTHON_SAYS


def test_the_script_does_not_inherit_the_entrypoints_future_flags(run_script: RunFn) -> None:
    result = run_script("def f(x: int) -> None: pass\nprint(f.__annotations__)\n")
    assert result.output == "{'x': <class 'int'>, 'return': None}\n"


@pytest.fixture
def script_server() -> Iterator[str]:
    """Serves the test scripts' bytes as SeaTable's file server would."""
    files = {"/bom.py": BOM, "/latin1.py": LATIN_1, "/invalid.py": INVALID_UTF8}

    class Files(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            payload = files.get(self.path, b"")
            self.send_response(200 if payload else 404)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fetched_script_bytes_reach_the_runner_unchanged(sandbox_factory: Any, receiver: CallbackReceiver,
                                                          script_server: str) -> None:
    """Through the service: the script URL's bytes, not a decoded copy with replacement characters. (Cold runners:
    a warm one may still be importing pandas when taken, which on a loaded host eats the 5 s limit.)"""
    sandbox: SandboxProcess = sandbox_factory()
    for script_id, name in ((801, "bom"), (802, "latin1"), (803, "invalid")):
        # The file server is the run's own SeaTable server: the only loopback address its download may reach.
        response = sandbox.post({"script_id": script_id, "script_url": f"{script_server}/{name}.py",
                                 "env": {"dtable_web_url": script_server}})
        assert response.status_code == 202, response.text
    results = {script_id: receiver.result(script_id) for script_id in (801, 802, 803)}
    assert results[801]["output"] == "bom ok /scripts/index.py\n" and results[801]["success"] is True
    assert results[802]["output"] == "café 4 'caf\\xe9'\n" and results[802]["success"] is True
    assert results[803]["output"] == PYTHON_SAYS + "\n" and results[803]["success"] is False
    # Inline content (drafts) is text: it arrives as UTF-8, a BOM in it included.
    response = sandbox.run(804, "\ufeffprint(len('é'))\n")
    assert response.status_code == 202
    assert json.dumps(receiver.result(804)["output"]) == json.dumps("1\n")
