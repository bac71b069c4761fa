"""What an eviction policy sees and the one interface every policy implements.

Which copies are *allowed* to be evicted (not pinned, above min_copies, nothing in flight) is decided by the
loader before a policy sees them; a policy only orders them, most evictable first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class EvictionCandidate:
    """One ready copy that may be evicted, with what the gateway knows of its model (cold path reads)."""

    model: str
    backend: str
    last_used: float  # 0 when never used since it was loaded
    memory_bytes: int = 0  # the model's registered size; 0 when unknown
    loaded_at: float = 0.0  # when this copy became ready (0 unknown)
    requests: int = 0  # requests the model served since it was registered, every gateway: survives eviction
    load_seconds: float = 0.0  # learned time of one load of this model (0: never measured)
    mean_gap: float = 0.0  # learned mean seconds between its requests, every gateway (0: not known yet)
    # The model's last request on any gateway (p:lastused, survives eviction; 0: not read). Before `loaded_at`
    # when the copy was loaded ahead of its next request (pre-warmed) and not used since.
    last_request: float = 0.0


class EvictionPolicy(Protocol):
    name: str

    def rank(self, candidates: list[EvictionCandidate]) -> list[EvictionCandidate]:
        """The candidates, the one to evict first at the head. Pure but for the policy's own clock state."""
        ...

    def score(self, candidate: EvictionCandidate) -> float:
        """How much the policy wants to keep this copy (higher: kept longer); shown in /admin/placement."""
        ...

    def evicted(self, candidate: EvictionCandidate) -> None:
        """Told after `candidate` was unloaded (Greedy-Dual policies age everyone through this)."""
        ...


def rank_by_score(
    candidates: list[EvictionCandidate], score: Callable[[EvictionCandidate], float], now: float, min_residency: float
) -> list[EvictionCandidate]:
    """Lowest score first; a copy loaded less than `min_residency` seconds ago only after every other (so the
    requests that waited for its load are served before it can go); ties to the least recently used."""

    def key(c: EvictionCandidate) -> tuple[bool, float, float, str, str]:
        young = c.loaded_at > 0 and now - c.loaded_at < min_residency
        return (young, score(c), c.last_used, c.backend, c.model)

    return sorted(candidates, key=key)
