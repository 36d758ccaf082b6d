"""The shared-secret check: `Authorization: Token <secret>` or `Bearer <secret>`, as upstream accepts."""

from __future__ import annotations

import hmac


class TokenAuth:
    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("an empty auth token would let every request through")
        self._accepted = (f"Token {token}".encode(), f"Bearer {token}".encode())

    def accepts(self, header: str | None) -> bool:
        """Constant-time comparison, so the secret cannot be guessed byte by byte from timings."""
        given = (header or "").encode("utf-8", "surrogateescape")
        matches = [hmac.compare_digest(given, accepted) for accepted in self._accepted]
        return any(matches)
