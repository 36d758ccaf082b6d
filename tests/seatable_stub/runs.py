"""Runs the stub itself started through the button, followed in background threads.

This is what lets a separate process (the demo) drive the stub like a user clicking "Run script" and read the
state changes back over the control API, the way dtable-web keeps polling on the user's behalf.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .button import RunScriptButton, RunScriptError, RunScriptTimeout, StateChange


@dataclass
class TrackedRun:
    """A run in progress or done: its state history and the last ScriptLog seen."""

    script_id: int
    dtable_uuid: str
    script_name: str
    states: list[dict[str, Any]] = field(default_factory=list)
    script: dict[str, Any] | None = None
    error: str | None = None
    done: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the control API."""
        return {
            "script_id": self.script_id,
            "dtable_uuid": self.dtable_uuid,
            "script_name": self.script_name,
            "states": list(self.states),
            "script": self.script,
            "error": self.error,
            "done": self.done,
        }


class RunTracker:
    """Submits runs synchronously (so refusals surface at once) and polls each in a daemon thread."""

    def __init__(self, button: RunScriptButton, deadline: float = 900.0) -> None:
        self.button = button
        self.deadline = deadline
        self._runs: dict[int, TrackedRun] = {}
        self._lock = threading.Lock()

    def start(self, dtable_uuid: str, script_name: str, **submit_options: Any) -> TrackedRun:
        """Click the button; raises RunScriptError if the scheduler refuses, else follows the run."""
        started = time.monotonic()
        script_id = self.button.submit(dtable_uuid, script_name, **submit_options)
        run = TrackedRun(script_id, dtable_uuid, script_name)
        with self._lock:
            self._runs[script_id] = run
        follower = threading.Thread(target=self._follow, args=(run, started), name=f"stub-run-{script_id}",
                                    daemon=True)
        follower.start()
        return run

    def _follow(self, run: TrackedRun, started: float) -> None:
        def on_change(change: StateChange) -> None:
            with self._lock:
                run.states.append({"state": change.state, "elapsed": round(change.elapsed, 3)})
                run.script = change.script

        try:
            final = self.button.wait(run.script_id, run.dtable_uuid, run.script_name, on_change=on_change,
                                     deadline=self.deadline, started=started)
            with self._lock:
                run.script = final
        except (RunScriptError, RunScriptTimeout, OSError) as exc:
            with self._lock:
                run.error = str(exc)
        finally:
            with self._lock:
                run.done = True

    def get(self, script_id: int) -> dict[str, Any] | None:
        """A snapshot of one run, or None."""
        with self._lock:
            run = self._runs.get(script_id)
            return run.as_dict() if run is not None else None

    def all(self) -> list[dict[str, Any]]:
        """Snapshots of every run, in start order."""
        with self._lock:
            return [run.as_dict() for run in self._runs.values()]
