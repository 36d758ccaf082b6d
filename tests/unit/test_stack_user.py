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


def test_host_setup_refuses_the_sandbox_user_as_stack_user_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Checked before host-setup touches anything (the sandbox user need not even exist)."""
    from sandbox.cli import main

    assert main(["host-setup", "--user", "no-such-sandbox-user", "--stack-user", "no-such-sandbox-user"]) != 0
    err = capsys.readouterr().err
    assert "is the sandbox user" in err and len(err.strip().splitlines()) == 1, err
