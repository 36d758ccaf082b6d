"""HS256 JWTs as dtable-web issues and checks them, expiry judged by the stub's clock, not the real one."""

from __future__ import annotations

import threading
import warnings
from typing import Any

import jwt
from jwt.warnings import InsecureKeyLengthWarning

# The shared secret is SeaTable's, not ours to choose, and PyJWT warns on every call with a short key; the
# warning filters are process-global, so the silencing is serialised.
_warnings_lock = threading.Lock()


class TokenError(Exception):
    """A token the stub refuses."""


class TokenExpired(TokenError):
    """The token's `exp` is not after the stub's clock."""


class TokenInvalid(TokenError):
    """Bad signature, malformed, or missing claims."""


def encode(claims: dict[str, Any], key: str) -> str:
    """Sign `claims` with HS256."""
    with _warnings_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, key, algorithm="HS256")


def decode(token: str, key: str, now: float, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Verify signature and `exp` against `now` (the stub clock); raise TokenExpired or TokenInvalid."""
    try:
        with _warnings_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["HS256"],
                options={"require": ["exp", *required], "verify_exp": False, "verify_iat": False,
                         "verify_nbf": False},
            )
    except jwt.PyJWTError as exc:
        raise TokenInvalid(str(exc)) from exc
    exp = claims["exp"]
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise TokenInvalid("exp is not a number")
    if exp <= now:
        raise TokenExpired(f"expired at {exp}, stub time is {now:.0f}")
    return claims
