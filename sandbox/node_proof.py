"""Answers a sandbox node signs, so the dispatcher trusts only nodes that hold their credential.

The dispatcher never sends its node token to learn whether a node is ready: a fake node would then learn it.
It sends a fresh random challenge instead; the node answers with an HMAC, keyed by each token it accepts,
over the challenge, the status and the exact body bytes. Without the token nobody can make an answer the
dispatcher believes (free slots, "never accepted this run"), and a changed body or a replayed answer fails.
Both services import this module, so both sides compute the same bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable

CHALLENGE_HEADER = "X-Node-Challenge"
PROOF_HEADER = "X-Node-Proof"
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_DOMAIN = b"seatable-sandbox-answer-v1"  # these MACs are good for nothing else


def new_challenge() -> str:
    return secrets.token_urlsafe(24)


def valid_challenge(challenge: str | None) -> bool:
    return challenge is not None and _CHALLENGE.fullmatch(challenge) is not None


def _mac(token: str, challenge: str, status: int, body: bytes) -> str:
    message = b"\n".join((_DOMAIN, challenge.encode(), str(status).encode(), body))
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def sign(tokens: Iterable[str], challenge: str, status: int, body: bytes) -> str:
    """The proof header's value: one MAC per accepted token (current and previous while rotating)."""
    return ", ".join(_mac(token, challenge, status, body) for token in tokens if token)


def verify(tokens: Iterable[str], challenge: str, status: int, body: bytes, header: str | None) -> bool:
    """True when one MAC in the header was made with one of `tokens` over exactly this answer."""
    given = [part.strip() for part in (header or "").split(",") if part.strip()]
    expected = [_mac(token, challenge, status, body) for token in tokens if token]
    found = [hmac.compare_digest(g, e) for g in given[:4] for e in expected]
    return any(found)
