"""Greedy-Dual-Size-Frequency with learned load costs (`--eviction gdsf`).

Each copy's priority is `H = L(t) + f(requests) * cost / size` (Cao & Irani's Greedy-Dual, with frequency as in
GDSF and FaasCache): the copy with the lowest H goes first, and `L`, the policy's clock, rises to the H of each
evicted copy, so copies not used for a while age out however popular they once were. `t` is the copy's last
use (or its load, if unused since): its H is what it was given then. `cost` is the model's measured load time,
`size` its registered bytes, `requests` its requests since registration across every gateway, so a model's
frequency survives its eviction (a ghost entry) and a newcomer (seen once) starts on probation below models
seen often. A copy younger than `min_residency` seconds is evicted only when nothing else can be.
"""

from __future__ import annotations

import bisect
import math

from placement.clock import Clock
from placement.eviction.base import EvictionCandidate, rank_by_score

_GB = 1e9
_HISTORY = 50_000  # L steps kept; older last uses count as L = 0 (they are the first to go anyway)


class GreedyDualSizeFrequency:
    name = "gdsf"

    def __init__(
        self,
        clock: Clock,
        *,
        min_residency: float = 0.5,
        default_cost: float = 1.0,
        log_frequency: bool = False,
        use_size: bool = True,
    ) -> None:
        self._clock = clock
        self.min_residency = min_residency
        self.default_cost = default_cost
        self.log_frequency = log_frequency
        self.use_size = use_size
        self.inflation = 0.0
        self._times: list[float] = []
        self._values: list[float] = []

    def _inflation_at(self, t: float) -> float:
        i = bisect.bisect_right(self._times, t)
        return self._values[i - 1] if i else 0.0

    def value(self, c: EvictionCandidate) -> float:
        """What keeping the copy is worth per byte, before aging: f * cost / size."""
        n = max(1, c.requests)
        f = math.log2(1 + n) if self.log_frequency else float(n)
        cost = c.load_seconds if c.load_seconds > 0 else self.default_cost
        size = c.memory_bytes / _GB if self.use_size and c.memory_bytes > 0 else 1.0
        return f * cost / size

    def score(self, candidate: EvictionCandidate) -> float:
        return self._inflation_at(max(candidate.last_used, candidate.loaded_at)) + self.value(candidate)

    def rank(self, candidates: list[EvictionCandidate]) -> list[EvictionCandidate]:
        return rank_by_score(candidates, self.score, self._clock.now(), self.min_residency)

    def evicted(self, candidate: EvictionCandidate) -> None:
        h = self.score(candidate)
        if h <= self.inflation:
            return
        self.inflation = h
        self._times.append(self._clock.now())
        self._values.append(h)
        if len(self._times) > _HISTORY:
            del self._times[: _HISTORY // 2], self._values[: _HISTORY // 2]
