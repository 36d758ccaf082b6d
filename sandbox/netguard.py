"""NetGuard: the sandbox's handle on its netguard helper (sandbox/netguard_helper.py).

The helper is a child process inside the sandbox user's rootless user namespace; it is the only part of the
sandbox that can write a runner's nftables rules. One request at a time over a pipe (each takes about a
millisecond). A helper that died is started again for the next request; `generation` tells its users, who
adopt their runners again (the rules themselves live in each runner's namespace and outlive the helper).
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HELPER = Path(__file__).with_name("netguard_helper.py")
# The system interpreter: Debian's python3-nftables is installed for it, not for the virtualenv.
SYSTEM_PYTHON = "/usr/bin/python3"


class NetGuardError(Exception):
    """The helper could not do what was asked; the message is safe to show."""


class NetGuard:
    def __init__(self, python: str = SYSTEM_PYTHON, helper: Path = HELPER) -> None:
        self.argv = [python, "-I", str(helper)]
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self.generation = 0  # how many helpers were started

    def start(self) -> None:
        """Start the helper now, so a missing python3-nftables stops the service at start with one line."""
        with self._lock:
            self._ensure()

    def current(self) -> int:
        """The generation of the running helper (started again first if it died)."""
        with self._lock:
            self._ensure()
            return self.generation

    def _ensure(self) -> subprocess.Popen[str]:
        if self._process is not None and self._process.poll() is None:
            return self._process
        process = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
                                   text=True, bufsize=1, cwd="/", close_fds=True)
        assert process.stdout is not None
        hello = _answer(process.stdout.readline())
        if not hello.get("ok"):
            process.kill()
            process.wait()
            raise NetGuardError(f"netguard helper did not start: {hello.get('error', 'no answer')}")
        self._process = process
        self.generation += 1
        return process

    def request(self, op: str, key: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            process = self._ensure()
            assert process.stdin is not None and process.stdout is not None
            try:
                process.stdin.write(json.dumps({"op": op, "key": key, **fields}) + "\n")
                process.stdin.flush()
                answer = _answer(process.stdout.readline())
            except (OSError, ValueError) as exc:
                self._process = None
                process.kill()
                process.wait()
                raise NetGuardError(f"netguard helper failed: {exc}") from None
        if not answer.get("ok"):
            raise NetGuardError(str(answer.get("error", "no answer")))
        return answer

    def stop(self) -> None:
        with self._lock:
            process, self._process = self._process, None
        if process is not None:
            assert process.stdin is not None
            process.stdin.close()  # the helper exits at end of input, releasing every netns it held
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _answer(line: str) -> dict[str, Any]:
    if not line:
        raise ValueError("the helper exited")
    answer = json.loads(line)
    if not isinstance(answer, dict):
        raise ValueError("not an answer")
    return answer
