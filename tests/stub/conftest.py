"""Fixtures: a stub on a free port per test, and a base with a script in it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.seatable_stub import StubServer
from tests.seatable_stub.state import Base

SECRET = "stub-tests-shared-secret-0123456789abcdef"
SCRIPT = "from seatable_api import context\nprint('hello', context.current_row)\n"


@pytest.fixture
def stub() -> Iterator[StubServer]:
    """A running stub with the test secret."""
    with StubServer(SECRET) as server:
        yield server


@pytest.fixture
def base(stub: StubServer) -> Base:
    """A base (API gateway on) holding `hello.py` and an empty Table1."""
    created = stub.seatable.add_base(name="Sales", use_api_gateway=True)
    stub.seatable.add_script(created.uuid, "hello.py", SCRIPT)
    return created


def web_headers(secret: str = SECRET) -> dict[str, str]:
    """What the scheduler sends to dtable-web."""
    return {"Authorization": f"Token {secret}"}
