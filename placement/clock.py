"""Wall time, passed in: last-used times, load backoff and copy ages come from here, so LRU and backoff are
tested without sleeping. Deadlines of real waits use the event loop's clock (`loop.time()`), since they bound
real awaits."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall time in epoch seconds (stored in Redis, shown to users)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
