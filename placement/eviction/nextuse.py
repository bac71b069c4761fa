"""Predicted next use (`--eviction nextuse`): Belady's rule with the future estimated from each model's arrivals.

Belady's MIN evicts the copy asked for again furthest in the future; the size-aware version weighs that by the
bytes held and the load it would take to bring the copy back. This policy does the same with the next use
*predicted* from the model's learned mean gap between requests (`placement.arrivals`, shared by all gateways
through Redis): it evicts the copy holding the most byte-seconds, expected, per second of load it would cost,
i.e. the lowest `cost / (remaining * size)`. The expected wait is the usual gap plus a quarter of the time the
copy has been idle (`arrivals.remaining`); a model seen once has no gap yet and is predicted far off
(probation). A copy loaded ahead of its next request (a pre-warm: the model's last request, `last_request`,
precedes the copy's load) and not used yet is expected at `last_request + mean_gap` (`arrivals.ahead`), so
it is not evicted in the seconds it was loaded for. A copy younger than `min_residency` seconds goes only when
nothing else can (anti-thrash: the requests that waited for its load are served first; the loader never
evicts a copy with requests in flight anyway).
"""

from __future__ import annotations

from placement.arrivals import ahead, keep_value, remaining
from placement.clock import Clock
from placement.eviction.base import EvictionCandidate, rank_by_score


class PredictedNextUse:
    name = "nextuse"

    def __init__(self, clock: Clock, *, min_residency: float = 0.2, use_size: bool = True) -> None:
        self._clock = clock
        self.min_residency = min_residency
        self.use_size = use_size

    def score(self, candidate: EvictionCandidate) -> float:
        c = candidate
        now = self._clock.now()
        if 0 < c.last_request < c.loaded_at and c.last_used <= c.loaded_at and c.mean_gap > 0:
            wait = ahead(c.mean_gap, now - c.last_request)
        else:
            wait = remaining(c.mean_gap, max(0.0, now - max(c.last_used, c.loaded_at)))
        return keep_value(c.load_seconds, c.memory_bytes if self.use_size else 0, wait)

    def rank(self, candidates: list[EvictionCandidate]) -> list[EvictionCandidate]:
        return rank_by_score(candidates, self.score, self._clock.now(), self.min_residency)

    def evicted(self, candidate: EvictionCandidate) -> None:
        pass
