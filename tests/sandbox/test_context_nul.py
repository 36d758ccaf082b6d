"""A NUL in a run's context (a SeaTable cell may hold one) reaches the script; found by schemathesis, which
called such a body schema-valid while the sandbox refused it."""

from __future__ import annotations

import pytest

from tests.support.podman import CallbackReceiver, SandboxProcess


@pytest.mark.parametrize("sandbox", ["cold"], indirect=True)
def test_a_nul_in_the_context_reaches_the_script(sandbox: SandboxProcess, receiver: CallbackReceiver) -> None:
    script = "import json, sys\nrow = json.loads(sys.stdin.read())['row']\nprint(repr(row['Name']))\n"
    answer = sandbox.run(4242, script, context={"table": "T", "row": {"Name": "a\x00b"}})
    assert answer.status_code == 202, answer.text
    result = receiver.result(4242)
    assert result["success"] is True and result["output"] == "'a\\x00b'\n", result
