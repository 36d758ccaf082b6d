"""This checkout's runner entrypoint as a module (the installed copy may be older): its pure functions under test."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

ENTRYPOINT = Path(__file__).resolve().parents[2] / "runner-rootfs" / "entrypoint.py"


def checkout_entrypoint() -> Any:
    spec = importlib.util.spec_from_file_location("checkout_entrypoint", ENTRYPOINT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
