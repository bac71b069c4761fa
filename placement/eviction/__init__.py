"""Eviction policies, one per module, chosen by name (`--eviction`)."""

from __future__ import annotations

from collections.abc import Callable

from placement.clock import Clock
from placement.eviction.base import EvictionCandidate, EvictionPolicy
from placement.eviction.gdsf import GreedyDualSizeFrequency
from placement.eviction.lru import LeastRecentlyUsed
from placement.eviction.nextuse import PredictedNextUse

EVICTIONS: dict[str, Callable[[Clock], EvictionPolicy]] = {
    "lru": lambda clock: LeastRecentlyUsed(),
    "gdsf": lambda clock: GreedyDualSizeFrequency(clock),
    "nextuse": lambda clock: PredictedNextUse(clock),
}

__all__ = [
    "EVICTIONS",
    "EvictionCandidate",
    "EvictionPolicy",
    "GreedyDualSizeFrequency",
    "LeastRecentlyUsed",
    "PredictedNextUse",
]
