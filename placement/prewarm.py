"""Pre-warming decisions: when to load a model before its expected next request, and when to give up on it.

Pure and clock-free (times are passed in): the simulator drives it; the numbers it needs (last use, mean gap
between requests) are the ones `placement.arrivals` learns. The rules:
- a model is due `lead` seconds before `last_used + mean_gap`, if it has a gap learned and is not given up;
- a pre-warm may take free room, or evict the coldest copy only when the eviction policy scores the model above
  that copy, and never a copy with requests waiting or in flight (the caller offers only evictable copies);
- a pre-warmed copy that is evicted (or found unused when the model's next request is far past due) is a miss;
  `max_misses` misses in a row and the model is given up on until it is used right after a pre-warm again.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PrewarmStats:
    loads: int = 0  # pre-warm loads started
    used: int = 0  # ... whose copy served a request before it was evicted
    wasted: int = 0  # ... evicted unused
    given_up: int = 0  # models given up on


@dataclass
class Prewarmer:
    lead: float = 2.0  # seconds before the expected request to have the copy ready
    max_misses: int = 3
    min_gap: float = 5.0  # models asked for more often than this stay loaded by eviction alone
    stats: PrewarmStats = field(default_factory=PrewarmStats)
    _misses: dict[str, int] = field(default_factory=dict)
    _pending: set[str] = field(default_factory=set)  # pre-warmed copies not yet used

    def due_at(self, model: str, last_used: float, mean_gap: float, load_seconds: float) -> float | None:
        """When to start a pre-warm of `model` (None: don't), given its last request and learned gap."""
        if mean_gap < self.min_gap or self._misses.get(model, 0) >= self.max_misses:
            return None
        return last_used + mean_gap - self.lead - load_seconds

    def started(self, model: str) -> None:
        self.stats.loads += 1
        self._pending.add(model)

    def served(self, model: str) -> None:
        """A request reached `model`: a pending pre-warm paid off."""
        if model in self._pending:
            self._pending.discard(model)
            self.stats.used += 1
            self._misses[model] = 0

    def evicted(self, model: str) -> None:
        """`model`'s copy went: if it was pre-warmed and never used, that is a miss."""
        if model in self._pending:
            self._pending.discard(model)
            self.stats.wasted += 1
            n = self._misses.get(model, 0) + 1
            self._misses[model] = n
            if n == self.max_misses:
                self.stats.given_up += 1
