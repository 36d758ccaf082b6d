"""The compose stack's user is refused when it would put the stack back into the runners' Podman, or run it as
root; refused before anything on the host is touched."""

from __future__ import annotations

import pytest

from sandbox.errors import SetupError
from sandbox.stack_user import setup_stack_user


@pytest.mark.parametrize(("stack", "message"), [
    ("seatable-sandbox", "--stack-user seatable-sandbox is the sandbox user"),
    ("root", "must run as an unprivileged user, not root"),
    ("0", "must run as an unprivileged user, not root"),
])
def test_setup_refuses_a_stack_user_that_is_no_separate_unprivileged_user(stack: str, message: str) -> None:
    with pytest.raises(SetupError, match=message):
        setup_stack_user(stack, "seatable-sandbox")
