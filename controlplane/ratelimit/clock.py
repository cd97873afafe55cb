"""Wall-clock time for window arithmetic, and a test clock that only moves when told to."""

from __future__ import annotations

import time


class Clock:
    """Seconds since the epoch (windows are aligned to it)."""

    def now(self) -> float:
        return time.time()


class TestClock(Clock):
    """Stands still at its start time; moves only by :meth:`advance` or :meth:`set`.

    Standing still, rather than running with an offset, keeps tests exact: a test that
    counts N requests in one minute cannot see the minute change under it, and two service
    processes set to the same instant agree on every window.
    """

    __test__ = False  # not a pytest class, whatever its name

    def __init__(self, start: float | None = None):
        self._now = time.time() if start is None else start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        self._now += seconds
        return self._now

    def set(self, when: float) -> float:
        self._now = when
        return self._now
