"""The shared-secret check: `Authorization: Token <secret>` or `Bearer <secret>`, as upstream accepts.

Several secrets may be accepted at once (the current one and those being rotated out), so a credential
changes without a moment in which one side refuses the other.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

SCHEMES = ("Token", "Bearer")


def presented(header: str | None) -> str | None:
    """The secret in an `Authorization: Token|Bearer <secret>` header, or None."""
    scheme, _, value = (header or "").partition(" ")
    return value if scheme in SCHEMES and value else None


class TokenAuth:
    def __init__(self, token: str, previous: Iterable[str] = ()) -> None:
        if not token:
            raise ValueError("an empty auth token would let every request through")
        tokens = [token, *(t for t in previous if t)]
        self._accepted = [f"{scheme} {t}".encode() for t in tokens for scheme in SCHEMES]

    def accepts(self, header: str | None) -> bool:
        """Constant-time comparison, so the secret cannot be guessed byte by byte from timings."""
        given = (header or "").encode("utf-8", "surrogateescape")
        matches = [hmac.compare_digest(given, accepted) for accepted in self._accepted]
        return any(matches)
