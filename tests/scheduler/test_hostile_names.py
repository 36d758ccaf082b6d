"""Names and bodies an attacker with SeaTable's side of the API sends, against a real scheduler (issue 20, item 6).

Script names that forge log lines, change the dtable-web URL the scheduler calls with SeaTable's secret ("." and
".."), or cannot be stored (a lone surrogate from a \\uD800 escape) get a 400, never a 500. Bodies are parsed
within a per-route budget: many tiny JSON values are refused before they become Python objects. Draft API
tokens leave the database files (SQLite's WAL included) once the sandbox holds the draft.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from scheduler import lifecycle, texts
from scheduler.config import Config
from scheduler.db import Store, open_store
from scheduler.seatable import ScriptNotFound, SeaTable
from tests.scheduler.conftest import AUTH, BASE, RunningServer, StubSeaTable, hand_off

BAD_NAMES = [
    ".",
    "..",
    " .. ",
    "\ud800.py",
    "a\udc00b.py",
    "a.py\n2026-12-01 12:00:00 ERROR forged line",
    "a.py\r\nforged",
    "x\u2028y.py",
    "x\u0085y.py",
    "\x1b[2Ka.py",
    "a\x00.py",
    "a/../../b.py",
    "..\\x.py",
    "gnp.\u202eexe.py",
]
GOOD_NAMES = ["a.py", "Rechnung März 😀.py", "..a.py", "a..py", "x y.py"]


@pytest.fixture
def env(make_env: Callable[..., dict[str, str]], seatable_stub: StubSeaTable) -> dict[str, str]:
    return make_env(SEATABLE_SERVER_URL=seatable_stub.url)


@pytest.fixture
def scheduler(env: dict[str, str], serve: Callable[[dict[str, str]], RunningServer]) -> RunningServer:
    """A real scheduler; stopped before its database is dropped (fixtures end in reverse order)."""
    return serve(env)


@pytest.fixture
def server_store(scheduler: RunningServer, env: dict[str, str]) -> Iterator[tuple[Config, Store]]:
    """The running scheduler's own database (migrated by it), opened as the dispatcher opens it."""
    config = Config.from_env(env)
    store = open_store(config)
    yield config, store
    store.disconnect()


def post_raw(server: RunningServer, path: str, body: bytes, auth: dict[str, str] = AUTH) -> requests.Response:
    return requests.post(f"{server.url}{path}", data=body, timeout=60,
                         headers={**auth, "Content-Type": "application/json"})


def post_result(server: RunningServer, store: Store, run_id: int, body: bytes) -> requests.Response:
    """A result callback as the sandbox sends it: the run handed off first, its own secret presented."""
    return post_raw(server, "/script-result/", body, {"Authorization": f"Token {hand_off(store, run_id)}"})


def run_body(**fields: Any) -> dict[str, Any]:
    return {"dtable_uuid": BASE, "script_name": "a.py", "owner": "alice@auth.local", "org_id": 7, **fields}


def draft_body(**fields: Any) -> dict[str, Any]:
    return run_body(**{"script_content": "print(1)", "temp_api_token": "tok", **fields})


def encoded(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()  # ensure_ascii: a lone surrogate travels as its \\uD800 escape


@pytest.mark.parametrize("path,make", [("/run-script/", run_body), ("/run-draft-script/", draft_body)])
def test_hostile_script_names_are_refused(scheduler: RunningServer, path: str,
                                          make: Callable[..., dict[str, Any]]) -> None:
    for name in BAD_NAMES:
        answer = post_raw(scheduler, path, encoded(make(script_name=name)))
        assert answer.status_code == 400, (name, answer.status_code, answer.text)
        assert answer.text == texts.PARAMETERS_INVALID, name
    for name in GOOD_NAMES:
        answer = post_raw(scheduler, path, encoded(make(script_name=name)))
        assert answer.status_code == 200, (name, answer.text)
        run = requests.get(f"{scheduler.url}/run-script/{answer.json()['script_id']}/", headers=AUTH, timeout=30,
                           params={"dtable_uuid": BASE, "script_name": name}).json()["script"]
        assert run["script_name"] == name
    assert "forged" not in scheduler.log()


def test_lone_surrogates_anywhere_are_a_400_not_a_500(scheduler: RunningServer) -> None:
    for body in (run_body(owner="\udc00@auth.local"), run_body(operate_from="x\ud800"),
                 run_body(context_data={"row": {"\ud800": 1}}), run_body(context_data={"row": ["ok", "\udfff"]}),
                 draft_body(script_content="print('\ud800')"), run_body(owner="alice\n@auth.local")):
        answer = post_raw(scheduler, "/run-script/" if "script_content" not in body else "/run-draft-script/",
                          encoded(body))
        assert answer.status_code == 400, (body, answer.status_code, answer.text)
    # Query strings and paths cannot carry surrogates (they are percent-encoded UTF-8), nor break the server.
    for url in (f"/run-script/1/?dtable_uuid={BASE}&script_name=%ED%A0%80",
                f"/run-script/1/?dtable_uuid={BASE}&script_name=%0A..",
                f"/tasks/{BASE}/%ED%A0%80/logs/", f"/tasks/{BASE}/..%0Aforged/logs/1/"):
        answer = requests.get(f"{scheduler.url}{url}", headers=AUTH, timeout=30)
        assert answer.status_code < 500, (url, answer.status_code, answer.text)


def test_a_result_with_a_lone_surrogate_is_stored_not_refused(scheduler: RunningServer,
                                                              server_store: tuple[Config, Store]) -> None:
    run_id = post_raw(scheduler, "/run-script/", encoded(run_body())).json()["script_id"]
    result = {"script_id": run_id, "success": True, "return_code": 0, "output": "half \ud83d of an emoji",
              "spend_time": 1.0}
    answer = post_result(scheduler, server_store[1], run_id, encoded(result))
    assert answer.status_code == 200, answer.text
    run = requests.get(f"{scheduler.url}/run-script/{run_id}/", headers=AUTH, timeout=30,
                       params={"dtable_uuid": BASE, "script_name": "a.py"}).json()["script"]
    assert run["output"] == "half \ufffd of an emoji"


def test_many_small_values_are_refused_before_parsing(scheduler: RunningServer,
                                                      server_store: tuple[Config, Store]) -> None:
    # ~1 MiB of empty objects: within the byte limit, ~64 bytes of Python object per 3 bytes of JSON.
    hoard = b'{"dtable_uuid": "%s", "script_name": "a.py", "owner": "a", "context_data": [%s{}]}' % (
        BASE.encode(), b"{}," * 350_000)
    answer = post_raw(scheduler, "/run-script/", hoard)
    assert answer.status_code == 413, answer.text
    assert answer.text == texts.BODY_TOO_MANY_VALUES
    answer = post_raw(scheduler, "/script-result/", b'{"script_id": 1, "x": [%s0]}' % (b"0," * 1000))
    assert answer.status_code == 413
    too_long = encoded(run_body(context_data={"row": {"notes": "x" * (3 * 1024 * 1024)}}))
    assert post_raw(scheduler, "/run-script/", too_long).status_code == 413
    # Separators inside strings are not values: a row full of them, and an output full of them, pass.
    row = {"table": "T", "row": {f"c{i}": "[{,:}]" * 100 for i in range(200)}}
    run_id = post_raw(scheduler, "/run-script/", encoded(run_body(context_data=row))).json()["script_id"]
    output = '{"a": [1, 2, 3]}, ' * 50_000
    answer = post_result(scheduler, server_store[1], run_id, encoded({"script_id": run_id, "success": True,
                                                                       "output": output, "return_code": 0,
                                                                       "spend_time": 1}))
    assert answer.status_code == 200, answer.text
    assert "Traceback" not in scheduler.log()


def test_dot_names_of_adopted_rows_never_reach_seatable(seatable_stub: StubSeaTable) -> None:
    seatable = SeaTable(seatable_stub.url, "secret")
    for name in (".", "..", "a/../b.py", "a\nb.py"):
        with pytest.raises(ScriptNotFound):
            seatable.task_file(BASE, name)
    assert seatable_stub.requests == []


def database_bytes(config: Config) -> bytes:
    path = Path(config.sqlite_path)
    return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def test_draft_tokens_leave_the_database_files(scheduler: RunningServer,
                                               server_store: tuple[Config, Store]) -> None:
    config, store = server_store
    token = f"DRAFT-TOKEN-{secrets.token_hex(16)}"
    code = f"print('{secrets.token_hex(16)}')"
    run_id = post_raw(scheduler, "/run-draft-script/",
                      encoded(draft_body(temp_api_token=token, script_content=code))).json()["script_id"]
    other = post_raw(scheduler, "/run-draft-script/",
                     encoded(draft_body(temp_api_token=token + "-2"))).json()["script_id"]
    if not store.mysql:
        assert token.encode() in database_bytes(config)  # the attack works before erasure: the test can fail

    lifecycle.erase_drafts(store, [run_id])  # the dispatcher's call once a sandbox accepted the draft
    finish = {"script_id": other, "success": True, "return_code": 0, "output": "", "spend_time": 1}
    assert post_result(scheduler, store, other, encoded(finish)).status_code == 200
    assert store.scrub()  # the maintenance loop's pass

    assert _draft_rows(store) == []
    if not store.mysql:
        stored = database_bytes(config)
        assert token.encode() not in stored and code.encode() not in stored


def _draft_rows(store: Store) -> list[Any]:
    from pony.orm import db_session

    with db_session:
        return list(store.db.select("SELECT id FROM script_log WHERE draft_api_token IS NOT NULL "
                                    "OR script_content IS NOT NULL"))
