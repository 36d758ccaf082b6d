"""The directory the API's gunicorn workers share their metrics through (prometheus_client multiprocess mode).

Kept apart from scheduler.metrics on purpose: the gunicorn master must set PROMETHEUS_MULTIPROC_DIR before
prometheus_client is imported anywhere in it (the library picks its value class at import), so this module
imports it only inside the hook that needs it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DIR_PREFIX = "seatable-scheduler-metrics-"


def prepare_multiprocess_dir(base: str | None = None) -> Path:
    """A fresh, empty directory for this start of the API, set as PROMETHEUS_MULTIPROC_DIR.

    Directories of earlier starts whose master is gone are removed, so counters never carry over from a
    previous start (Prometheus sees a reset, as it should) and files do not pile up.
    """
    root = Path(base or os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    for old in root.glob(DIR_PREFIX + "*"):
        pid = old.name[len(DIR_PREFIX) :]
        if old.is_dir() and not old.is_symlink() and (not pid.isdigit() or not _alive(int(pid))):
            shutil.rmtree(old, ignore_errors=True)
    path = root / f"{DIR_PREFIX}{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge
    return True


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit hook: a dead worker's live gauges leave the sums (its counters stay)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid)


def remove_multiprocess_dir() -> None:
    """gunicorn's on_exit hook: this start's directory goes with its master."""
    path = os.environ.get(MULTIPROC_ENV)
    if path and Path(path).name.startswith(DIR_PREFIX):
        shutil.rmtree(path, ignore_errors=True)
