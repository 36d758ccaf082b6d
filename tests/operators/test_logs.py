"""The real services' logs with LOG_FORMAT=json: JSON lines only, the run's fields on lines about a run,
and never a token, a script's code or its output."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.operators.conftest import SCRIPTS, Ops
from tests.seatable_stub.button import RunScriptError


def log_texts(ops: Ops) -> dict[str, str]:
    texts = {service.name: service.log.read_text(errors="replace") for service in ops.pipeline.services}
    assert ops.pipeline.sandbox is not None
    texts["sandbox"] = ops.pipeline.sandbox.log()
    return texts


def records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_every_line_is_json(ops: Ops) -> None:
    for name, text in log_texts(ops).items():
        parsed = records(text)  # raises on a line that is not JSON
        assert parsed, name
        assert all({"time", "level", "logger", "message"} <= set(r) for r in parsed), name


def test_lines_about_a_run_carry_its_fields(ops: Ops) -> None:
    run = ops.runs["hello.py"]
    assert ops.pipeline.sandbox is not None
    node_url = ops.pipeline.sandbox.url
    node_name = ops.pipeline.sandbox.env["PYTHON_SANDBOX_NODE_NAME"]
    about = {name: [r for r in records(text) if r.get("run_id") == run["id"]] for name, text in log_texts(ops).items()}
    scheduler, dispatcher, sandbox = about["scheduler"], about["dispatcher"], about["sandbox"]
    assert scheduler[0]["message"] == "queued (manualy)"
    assert any(r["message"].startswith("running after") for r in scheduler)
    assert any(r["message"].startswith("finished: success") for r in scheduler)
    assert any(r["message"].startswith("hand-off: accepted") for r in dispatcher)
    assert any(r["message"] == "accepted" for r in sandbox)
    assert any(r["message"].startswith("finished: success") for r in sandbox)
    for record in scheduler + dispatcher:
        assert record["script_name"] == "hello.py" and record["base"].replace("-", "") == ops.base_uuid, record
    for record in scheduler[1:] + dispatcher:  # queued before any node was chosen
        assert record["node"] == node_url, record
    for record in sandbox:
        assert record["script_name"] == "hello.py" and record["node"] == node_name, record
        assert record["base"].replace("-", "") == ops.base_uuid, record


def test_no_secret_code_or_output_in_any_log(ops: Ops) -> None:
    pipeline = ops.pipeline
    assert pipeline.stub is not None
    url_tokens = [u.token for u in pipeline.stub.seatable.script_urls()]
    assert url_tokens
    secrets = [pipeline.secret, pipeline.sandbox_token, ops.metrics_token, ops.status_token, *url_tokens]
    for name, text in log_texts(ops).items():
        for secret in secrets:
            assert secret not in text, f"a secret in the {name} log"
        assert "eyJ" not in text, f"a JWT (temp_api_token) in the {name} log"
        for code in SCRIPTS.values():
            assert code.strip() not in text and "hello from the runner" not in text and "about to fail" not in text


def test_a_script_name_that_looks_like_a_record_stays_one_record(ops: Ops) -> None:
    """A newline in a name is refused at the door (400, issue 20); quotes and braces get through and must stay
    inside their own field."""
    button = ops.pipeline.button(poll_interval=0.2)
    with pytest.raises(RunScriptError, match="400"):
        button.submit(ops.base_uuid, 'x.py\n{"level": "ERROR", "message": "forged"}', owner="forger@auth.local")
    forged = 'x.py", "level": "ERROR", "logger": "scheduler", "message": "forged'
    run_id = button.submit(ops.base_uuid, forged, owner="forger@auth.local")
    button.wait(run_id, ops.base_uuid, forged, deadline=120)
    for name, text in log_texts(ops).items():
        parsed = records(text)
        assert not any(r.get("message") == "forged" for r in parsed), name
    mine = [r for r in records(log_texts(ops)["scheduler"]) if r.get("run_id") == run_id]
    assert mine and all(r["script_name"] == forged for r in mine)
