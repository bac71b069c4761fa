"""Offline policies that know the future of the trace: bounds to measure the real policies against.

They implement `placement.eviction.EvictionPolicy`, so the simulator runs them exactly as it runs the real ones.
"""

from __future__ import annotations

from loadtests.sim.trace import Trace
from placement.clock import Clock
from placement.eviction import EvictionCandidate


class Belady:
    """Belady's MIN: evict the copy whose next request is furthest away (optimal in misses for equal sizes)."""

    name = "belady"

    def __init__(self, trace: Trace, clock: Clock) -> None:
        self.trace = trace
        self.clock = clock

    def score(self, candidate: EvictionCandidate) -> float:
        return -self.trace.next_use(candidate.model, self.clock.now())

    def rank(self, candidates: list[EvictionCandidate]) -> list[EvictionCandidate]:
        return sorted(candidates, key=lambda c: (self.score(c), c.backend, c.model))

    def evicted(self, candidate: EvictionCandidate) -> None:
        pass


class BeladySize(Belady):
    """Size-aware oracle: evict the copy with the largest (time to next request) * size / load cost, i.e. the one
    holding the most byte-seconds per second of load it would cost to bring back. A heuristic bound where sizes
    differ (the exact size-aware optimum is NP-hard); with equal sizes and costs it is Belady's MIN."""

    name = "belady-size"

    def score(self, candidate: EvictionCandidate) -> float:
        now = self.clock.now()
        gap = self.trace.next_use(candidate.model, now) - now
        size = max(1, self.trace.sizes.get(candidate.model, 1))
        return -gap * size / max(1e-9, self.trace.costs.get(candidate.model, 1.0))
