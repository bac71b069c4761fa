"""Plain least-recently-used: modelyard's behaviour before the learned policies (`--eviction lru`)."""

from __future__ import annotations

from placement.eviction.base import EvictionCandidate


class LeastRecentlyUsed:
    """Evict the copy whose last request is oldest."""

    name = "lru"

    def rank(self, candidates: list[EvictionCandidate]) -> list[EvictionCandidate]:
        return sorted(candidates, key=lambda c: (c.last_used, c.backend, c.model))

    def score(self, candidate: EvictionCandidate) -> float:
        return candidate.last_used

    def evicted(self, candidate: EvictionCandidate) -> None:
        pass
