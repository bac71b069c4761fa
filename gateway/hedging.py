"""Hedged requests and retries: the race between two copies, and the budgets that keep both cheap.

- `race(first, second, delay, good)`: start `first`; if it has not finished after `delay` seconds, ask `second`
  for a hedge (it may decline: no other copy, no budget) and return the first *good* outcome of the two; the
  other is cancelled. Cancelling a forward closes its upstream connection (an HTTP/1.1 connection whose answer
  is still due can't be reused; `adapters.upstream`) or cancels its gRPC call (HTTP/2 RST_STREAM).
- `HedgeBudget`: hedges may add at most `max_extra_percent` of the requests under a policy in a sliding window
  (on the injected clock), so when every copy is slow the gateway adds a few percent of load, not 100%.
- `LatencyWindow`: the last N latencies of a model, for the delay of policies with `after_ms: null` (its p95).
- `RetryBudget`: Envoy's retry budget: retries in flight at most `percent` of the requests in flight, or
  `minimum`, whichever is larger, so a backend that fails everything doesn't double the load on the others.
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from placement.clock import Clock

R = TypeVar("R")


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve a finished loser's exception, so asyncio does not report it as never retrieved."""
    if not task.cancelled():
        task.exception()


async def race(
    first: Callable[[], Awaitable[R]],
    second: Callable[[], Awaitable[R] | None],
    delay: float,
    good: Callable[[R], bool],
) -> tuple[R, int]:
    """Run `first()`; after `delay` seconds without an answer, start `second()` unless it returns None.

    Returns the first good outcome (an answer `good` accepts) and who gave it (0: first, 1: second). When no
    outcome is good, the first's outcome is returned (or raised): the caller sees what it would have without
    hedging. Whatever is still running when this returns, or when the caller is cancelled, is cancelled.
    """
    tasks: list[asyncio.Future[R]] = [asyncio.ensure_future(first())]
    try:
        done, _ = await asyncio.wait(tasks, timeout=delay)
        if not done:
            hedge = second()
            if hedge is not None:
                tasks.append(asyncio.ensure_future(hedge))
        pending: set[asyncio.Future[R]] = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for i, task in enumerate(tasks):
                if task in done and not task.cancelled() and task.exception() is None and good(task.result()):
                    return task.result(), i
        return tasks[0].result(), 0
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
            task.add_done_callback(_consume)


class HedgeBudget:
    """Hedges at most `percent` of the requests counted in the last `window` seconds (buckets of window/10), or
    `minimum` hedges per window, whichever is larger: without a floor, the first stalls after a quiet spell and
    every stall of a model with little traffic would never be hedged, while a floor of one hedge per window
    can't add more than that much load when every copy is slow."""

    def __init__(self, clock: Clock, window: float = 10.0, buckets: int = 10, minimum: int = 1) -> None:
        self.clock = clock
        self.minimum = minimum
        self.width = window / buckets
        self.buckets = buckets
        self._slots: collections.deque[list[int]] = collections.deque()  # [bucket index, requests, hedges]
        self.requests = 0
        self.hedges = 0

    def _advance(self) -> list[int]:
        index = math.floor(self.clock.now() / self.width)
        slots = self._slots
        while slots and slots[0][0] <= index - self.buckets:
            _, r, h = slots.popleft()
            self.requests -= r
            self.hedges -= h
        if not slots or slots[-1][0] != index:
            slots.append([index, 0, 0])
        return slots[-1]

    def request(self) -> None:
        """Count one request that could be hedged."""
        self._advance()[1] += 1
        self.requests += 1

    def try_hedge(self, percent: float) -> bool:
        """Take one hedge if the window's hedges stay within `percent` of its requests."""
        slot = self._advance()
        if self.hedges + 1 > self.minimum and (self.hedges + 1) * 100 > percent * self.requests:
            return False
        slot[2] += 1
        self.hedges += 1
        return True


class LatencyWindow:
    """The last `size` latencies of one model; `p95()` is None until `min_samples` were seen."""

    def __init__(self, size: int = 200, min_samples: int = 20) -> None:
        self._values: collections.deque[float] = collections.deque(maxlen=size)
        self.min_samples = min_samples
        self._p95: float | None = None
        self._stale = 0
        self._every = max(1, size // 20)  # sorting on every sample would cost more than it tells

    def add(self, seconds: float) -> None:
        self._values.append(seconds)
        self._stale += 1
        if self._stale >= self._every:
            self._p95 = None

    def p95(self) -> float | None:
        if self._p95 is None:
            if len(self._values) < self.min_samples:
                return None
            ordered = sorted(self._values)
            self._p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
            self._stale = 0
        return self._p95


class RetryBudget:
    """Retries in flight <= max(`minimum`, `percent`% of requests in flight)."""

    def __init__(self, percent: float = 20.0, minimum: int = 5) -> None:
        self.percent = percent
        self.minimum = minimum
        self.active = 0  # requests in flight (the data plane counts them)
        self.retrying = 0

    def try_acquire(self) -> bool:
        if self.retrying + 1 > max(self.minimum, self.active * self.percent / 100):
            return False
        self.retrying += 1
        return True

    def release(self) -> None:
        self.retrying -= 1
