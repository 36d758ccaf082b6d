"""TLS for the control plane: gunicorn's settings from certificate files, and errors told in plain words.

Both services serve HTTPS the same way (gunicorn's certfile/keyfile, client certificates required when a
client CA is given) and both call over HTTPS with `requests`; the scheduler imports this module too, so a
wrong CA, a wrong host name or plain HTTP on a TLS port reads the same in every log.
"""

from __future__ import annotations

import ssl
from typing import Any

PLAIN_HTTP_HINT = "connection closed before any answer: an https:// server behind an http:// URL?"


def gunicorn_settings(cert: str, key: str, client_ca: str = "") -> dict[str, Any]:
    """certfile/keyfile for HTTPS; with a client CA, a handshake without a certificate signed by it fails."""
    if not cert:
        return {}
    settings: dict[str, Any] = {"certfile": cert, "keyfile": key}
    if client_ca:
        settings.update(ca_certs=client_ca, cert_reqs=ssl.CERT_REQUIRED)
    return settings


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 12:  # requests wraps urllib3's error, which wraps the ssl module's
        current = todo.pop(0)
        if current in seen:
            continue
        seen.append(current)
        todo += [arg for arg in current.args if isinstance(arg, BaseException)]
        for attr in ("reason", "__cause__", "__context__"):
            inner = getattr(current, attr, None)
            if isinstance(inner, BaseException):
                todo.append(inner)
    return seen


def tls_reason(exc: BaseException) -> str:
    """What went wrong in a TLS handshake, in words an operator can act on."""
    for inner in _chain(exc):
        if isinstance(inner, ssl.SSLCertVerificationError):
            message = inner.verify_message or str(inner)
            if "hostname" in message.lower() or "ip address mismatch" in message.lower():
                return f"the certificate does not name this host ({message})"
            return f"the certificate is not signed by a trusted CA ({message}); check the CA bundle"
    text = " ".join(str(inner) for inner in _chain(exc))
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        return "the server does not speak TLS: an http:// server behind an https:// URL?"
    if "CERTIFICATE_REQUIRED" in text or "BAD_CERTIFICATE" in text or "UNKNOWN_CA" in text:
        return "the server refused the handshake: it requires a client certificate signed by its client CA"
    if any(isinstance(inner, ssl.SSLEOFError) for inner in _chain(exc)) or "EOF occurred" in text:
        return ("the server ended the handshake: does it require a client certificate (one signed by its client "
                "CA)?")
    return text[:200] or type(exc).__name__


def is_tls_error(exc: BaseException) -> bool:
    """A failure of TLS itself, however deeply requests and urllib3 wrapped it (a client certificate the
    server wanted arrives as an alert after the handshake, inside a "connection aborted")."""
    return any(isinstance(inner, ssl.SSLError) for inner in _chain(exc))


def plain_http_to_tls(exc: BaseException) -> bool:
    """A connection the server closed without a byte of answer: what a TLS port does to plain HTTP."""
    names = {type(inner).__name__ for inner in _chain(exc)}
    return bool(names & {"RemoteDisconnected", "ConnectionResetError", "BadStatusLine"})


def describe_failure(exc: BaseException) -> str:
    """One line for a failed request: TLS problems and plain HTTP on a TLS port in words, else the cause's name."""
    if is_tls_error(exc):
        return f"TLS: {tls_reason(exc)}"
    if plain_http_to_tls(exc):
        return f"{innermost_name(exc)}: {PLAIN_HTTP_HINT}"
    return type(exc).__name__


def innermost_name(exc: BaseException) -> str:
    """The innermost cause's name ("ConnectionResetError", "RemoteDisconnected", "ReadTimeoutError"...)."""
    cause = exc
    for _ in range(5):  # requests wraps urllib3's error, which wraps the socket's
        inner = next((arg for arg in cause.args if isinstance(arg, BaseException)), None)
        if inner is None:
            break
        cause = inner
    return type(cause).__name__
