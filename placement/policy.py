"""Placement policies: small objects with one method each, chosen in settings.

- a `BackendChooser` ranks the backends that could take a new copy;
- an `EvictionPolicy` ranks the copies that may be evicted to make room.
Which copies are *allowed* to be evicted (not pinned, above min_copies, nothing in flight) is decided by the
loader before the policy sees them; a policy only orders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from placement.records import ModelSpec


@dataclass(frozen=True, slots=True)
class BackendLoad:
    """How full one backend is, as Redis says right now."""

    backend: str
    models: int
    cap_models: int
    memory_bytes: int
    cap_bytes: int | None

    def fits(self, spec: ModelSpec) -> bool:
        if self.models + 1 > self.cap_models:
            return False
        return self.cap_bytes is None or self.memory_bytes + spec.memory_bytes <= self.cap_bytes

    def could_ever_fit(self, spec: ModelSpec) -> bool:
        return self.cap_bytes is None or spec.memory_bytes <= self.cap_bytes


@dataclass(frozen=True, slots=True)
class EvictionCandidate:
    model: str
    backend: str
    last_used: float  # 0 when never used since it was loaded


class BackendChooser(Protocol):
    def rank(self, spec: ModelSpec, loads: list[BackendLoad]) -> list[BackendLoad]: ...


class EvictionPolicy(Protocol):
    def rank(self, candidates: list[EvictionCandidate]) -> list[EvictionCandidate]: ...


class MostFreeFirst:
    """Spread models: the backend with the most free slots first, then the most free bytes, then by id."""

    def rank(self, spec: ModelSpec, loads: list[BackendLoad]) -> list[BackendLoad]:
        def key(b: BackendLoad) -> tuple[int, float, str]:
            free_bytes = float("inf") if b.cap_bytes is None else b.cap_bytes - b.memory_bytes
            return (-(b.cap_models - b.models), -free_bytes, b.backend)

        return sorted(loads, key=key)


class LeastRecentlyUsed:
    """Evict the copy whose last request is oldest."""

    def rank(self, candidates: list[EvictionCandidate]) -> list[EvictionCandidate]:
        return sorted(candidates, key=lambda c: (c.last_used, c.backend, c.model))


CHOOSERS: dict[str, type[MostFreeFirst]] = {"most-free": MostFreeFirst}
EVICTIONS: dict[str, type[LeastRecentlyUsed]] = {"lru": LeastRecentlyUsed}
