"""The stub's clock: real time plus an offset that tests move, so token expiry is testable without waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Clock:
    """Wall clock (epoch seconds) that tests can move forward, back or pin to a moment."""

    def __init__(self, source: Callable[[], float] = time.time) -> None:
        self._source = source
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        """Current stub time in epoch seconds."""
        with self._lock:
            return self._source() + self._offset

    @property
    def offset(self) -> float:
        """Seconds the stub clock is ahead of real time (negative: behind)."""
        with self._lock:
            return self._offset

    def advance(self, seconds: float) -> float:
        """Move the clock forward (or back with a negative value); returns the new time."""
        with self._lock:
            self._offset += seconds
            return self._source() + self._offset

    def set(self, epoch: float) -> None:
        """Make `now()` return `epoch` at this instant; the clock keeps running from there."""
        with self._lock:
            self._offset = epoch - self._source()

    def reset(self) -> None:
        """Back to real time."""
        with self._lock:
            self._offset = 0.0
