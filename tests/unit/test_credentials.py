"""Credentials by role, the parts that need no service: signed node answers, rotation lists, sandbox config."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from falcon import testing

from sandbox import node_proof, texts
from sandbox.app import create_app
from sandbox.config import SandboxConfig
from scheduler.auth import TokenAuth
from scheduler.config import Config, ConfigError


class NoRuns:
    def status(self, script_id: int) -> str | None:
        return None


def sandbox_client(tokens: list[str]) -> testing.TestClient:
    def ready() -> tuple[bool, dict[str, object]]:
        return True, {"node": "n", "slots": {"total": 3, "busy": 0, "free": 3}}

    return testing.TestClient(create_app(tokens, NoRuns(), ready, ready))


def test_answers_are_signed_with_every_accepted_token_and_nothing_else() -> None:
    client = sandbox_client(["new-token", "old-token"])
    challenge = node_proof.new_challenge()
    ready = client.simulate_get("/ready", headers={node_proof.CHALLENGE_HEADER: challenge})
    proof = ready.headers[node_proof.PROOF_HEADER.lower()]
    for token in ("new-token", "old-token"):  # a dispatcher on either side of a rotation believes it
        assert node_proof.verify([token], challenge, 200, ready.content, proof)
    assert not node_proof.verify(["another-token"], challenge, 200, ready.content, proof)
    assert not node_proof.verify(["new-token"], node_proof.new_challenge(), 200, ready.content, proof)  # replayed
    assert not node_proof.verify(["new-token"], challenge, 200, ready.content.replace(b"3", b"9"), proof)  # changed
    assert not node_proof.verify(["new-token"], challenge, 503, ready.content, proof)
    # Errors are signed too, so "never accepted here" (404) can be believed; no challenge, no proof.
    gone = client.simulate_get("/function/runs/5", headers={"Authorization": "Token old-token",
                                                             node_proof.CHALLENGE_HEADER: challenge})
    assert gone.status_code == 404
    assert node_proof.verify(["old-token"], challenge, 404, gone.content, gone.headers[node_proof.PROOF_HEADER.lower()])
    assert node_proof.PROOF_HEADER.lower() not in client.simulate_get("/ready").headers
    forbidden = client.simulate_get("/function/runs/5", headers={"Authorization": "Token guess"})
    assert forbidden.status_code == 403


def test_the_scheduler_accepts_current_and_previous_seatable_tokens() -> None:
    config = Config.from_env({"PYTHON_SCHEDULER_AUTH_TOKEN": "new", "PYTHON_SCHEDULER_PREVIOUS_AUTH_TOKENS": "old"})
    auth = TokenAuth(config.auth_token, config.previous_auth_tokens)
    assert auth.accepts("Token new") and auth.accepts("Bearer old") and not auth.accepts("Token older")
    assert "new" not in repr(config) and "old" not in repr(config)


def test_each_node_has_its_own_token() -> None:
    env = {"PYTHON_SCHEDULER_AUTH_TOKEN": "s", "PYTHON_SANDBOX_URLS": "http://a:8088,http://b:8088"}
    config = Config.from_env({**env, "PYTHON_SANDBOX_NODE_TOKENS": "http://a:8088=tok-a,http://b:8088/=tok-b"})
    config.require_dispatch_settings()
    assert (config.node_token("http://a:8088"), config.node_token("http://b:8088")) == ("tok-a", "tok-b")
    shared = Config.from_env({**env, "PYTHON_SANDBOX_AUTH_TOKEN": "one", "PYTHON_SANDBOX_NODE_TOKENS": "http://a:8088=a"})
    assert (shared.node_token("http://a:8088"), shared.node_token("http://b:8088")) == ("a", "one")
    missing = Config.from_env({**env, "PYTHON_SANDBOX_NODE_TOKENS": "http://a:8088=tok-a"})
    with pytest.raises(ConfigError, match="http://b:8088"):
        missing.require_dispatch_settings()
    for bad, message in (("http://c:8088=x", "not in PYTHON_SANDBOX_URLS"), ("tok", "URL=TOKEN"),
                         ("http://a:8088=x,http://a:8088=y", "twice")):
        with pytest.raises(ConfigError, match=message):
            Config.from_env({**env, "PYTHON_SANDBOX_NODE_TOKENS": bad})


def test_a_sandbox_warns_once_that_seatables_secret_is_not_used(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sandbox.config")
    config = SandboxConfig.from_env({"PYTHON_SANDBOX_AUTH_TOKEN": "n", "PYTHON_SCHEDULER_AUTH_TOKEN": "master",
                                     "PYTHON_SANDBOX_PREVIOUS_AUTH_TOKENS": "p1, p2"})
    assert [r.getMessage() for r in caplog.records] == [texts.UNUSED_SEATABLE_SECRET]
    assert "master" not in repr(config) and config.accepted_tokens == ("n", "p1", "p2")
    caplog.clear()
    SandboxConfig.from_env({"PYTHON_SANDBOX_AUTH_TOKEN": "n"})
    assert not caplog.records
    with pytest.raises(ValueError, match="PYTHON_SANDBOX_AUTH_TOKEN must be set"):
        SandboxConfig.from_env({"PYTHON_SCHEDULER_AUTH_TOKEN": "master"})


def test_sandbox_tls_settings_are_checked_at_start(tmp_path: Any) -> None:
    base = {"PYTHON_SANDBOX_AUTH_TOKEN": "n"}
    with pytest.raises(ValueError, match="go together"):
        SandboxConfig.from_env({**base, "PYTHON_SANDBOX_TLS_CERT": "/etc/hostname"})
    with pytest.raises(ValueError, match="cannot read it"):
        SandboxConfig.from_env({**base, "PYTHON_SCHEDULER_CA_BUNDLE": str(tmp_path / "none.pem")})
    with pytest.raises(ValueError, match="client certificates are checked on HTTPS only"):
        SandboxConfig.from_env({**base, "PYTHON_SANDBOX_TLS_CLIENT_CA": "/etc/hostname"})
