"""Backend choice: a `BackendChooser` ranks the backends that could take a new copy (small objects with one
method, chosen in settings). Eviction policies live in `placement.eviction`, one per module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from placement.eviction.base import EvictionCandidate, EvictionPolicy
from placement.records import ModelSpec

__all__ = ["CHOOSERS", "BackendChooser", "BackendLoad", "EvictionCandidate", "EvictionPolicy", "MostFreeFirst"]


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


class BackendChooser(Protocol):
    def rank(self, spec: ModelSpec, loads: list[BackendLoad]) -> list[BackendLoad]: ...


class MostFreeFirst:
    """Spread models: the backend with the most free slots first, then the most free bytes, then by id."""

    def rank(self, spec: ModelSpec, loads: list[BackendLoad]) -> list[BackendLoad]:
        def key(b: BackendLoad) -> tuple[int, float, str]:
            free_bytes = float("inf") if b.cap_bytes is None else b.cap_bytes - b.memory_bytes
            return (-(b.cap_models - b.models), -free_bytes, b.backend)

        return sorted(loads, key=key)


CHOOSERS: dict[str, type[MostFreeFirst]] = {"most-free": MostFreeFirst}
