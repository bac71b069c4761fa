"""Pre-warming decisions: when to load a model before its expected next request, and when to give up on it.

Pure and clock-free (times are passed in): the simulator drives it; the numbers it needs (last use, mean gap
between requests) are the ones `placement.arrivals` learns. The rules:
- a model is due `lead` seconds before `last_used + mean_gap`, if it has a gap learned and is not given up;
- a pre-warm may take free room, or evict the coldest copy only when the eviction policy scores the model above
  that copy, and never a copy with requests waiting or in flight (the caller offers only evictable copies);
- a pre-warmed copy that is evicted (or found unused when the model's next request is far past due) is a miss;
  `max_misses` misses in a row and the model is given up on for a while: `retry_after` seconds of its own
  requests (measured from its last use when it was first found given up), doubling with each give-up in a row
  up to `max_retry_after`; then it gets one more try (one miss gives it up again), and a used pre-warm clears
  everything. Patterns change (a timer is reconfigured, a client settles): a model is never given up for good.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from placement.eviction.base import EvictionCandidate


def prewarm_candidate(
    model: str, last_request: float, mean_gap: float, load_seconds: float, memory_bytes: int, now: float
) -> EvictionCandidate:
    """`model` as if its copy were loaded now ahead of its next request: the eviction policy's score of it is what
    a pre-warm is worth, to be weighed against the copies it would evict."""
    return EvictionCandidate(
        model,
        "",
        now,  # what a copy's last use is at its commit (the loader's LRU entry)
        memory_bytes=memory_bytes,
        loaded_at=now,
        load_seconds=load_seconds,
        mean_gap=mean_gap,
        last_request=last_request,
    )


@dataclass
class PrewarmStats:
    loads: int = 0  # pre-warm loads started
    used: int = 0  # ... whose copy served a request before it was evicted
    wasted: int = 0  # ... evicted unused
    given_up: int = 0  # give-ups (a model given up, retried and given up again counts twice)
    retried: int = 0  # given-up models tried again after their pause


@dataclass
class Prewarmer:
    lead: float = 2.0  # seconds before the expected request to have the copy ready
    max_misses: int = 3
    min_gap: float = 5.0  # models asked for more often than this stay loaded by eviction alone
    retry_after: float = 600.0
    early_step: float = 0.1  # how much earlier (share of the gap) after a request that came before its pre-warm
    max_early: float = 0.5
    max_retry_after: float = 4800.0
    stats: PrewarmStats = field(default_factory=PrewarmStats)
    _misses: dict[str, int] = field(default_factory=dict)
    _early: dict[str, float] = field(default_factory=dict)  # per model: share of its gap to pre-warm earlier
    _gave_up: dict[str, int] = field(default_factory=dict)  # give-ups in a row, for the doubling pause
    _paused_from: dict[str, float] = field(default_factory=dict)  # given up: the last use its pause counts from
    _pending: set[str] = field(default_factory=set)  # pre-warmed copies not yet used

    def due_at(self, model: str, last_used: float, mean_gap: float, load_seconds: float) -> float | None:
        """When to start a pre-warm of `model` (None: don't), given its last request and learned gap."""
        if mean_gap < self.min_gap or self._paused(model, last_used):
            return None
        return last_used + (1 - self._early.get(model, 0.0)) * mean_gap - self.lead - load_seconds

    def late(self, model: str) -> None:
        """A request for `model` came before its pre-warm was due: pre-warm it earlier from now on."""
        self._early[model] = min(self.max_early, self._early.get(model, 0.0) + self.early_step)

    def given_up(self, model: str) -> bool:
        return self._misses.get(model, 0) >= self.max_misses

    def _paused(self, model: str, last_used: float) -> bool:
        if not self.given_up(model):
            return False
        since = self._paused_from.setdefault(model, last_used)
        pause = min(self.max_retry_after, self.retry_after * 2 ** (self._gave_up.get(model, 1) - 1))
        if last_used < since + pause:
            return True
        # One more try: a miss gives it up again, for twice as long.
        self._misses[model] = self.max_misses - 1
        del self._paused_from[model]
        self.stats.retried += 1
        return False

    def started(self, model: str) -> None:
        self.stats.loads += 1
        self._pending.add(model)

    def served(self, model: str) -> None:
        """A request reached `model`: a pending pre-warm paid off."""
        if model in self._pending:
            self._pending.discard(model)
            self.stats.used += 1
            self._misses[model] = 0
            self._gave_up.pop(model, None)

    def evicted(self, model: str) -> None:
        """`model`'s copy went: if it was pre-warmed and never used, that is a miss."""
        if model in self._pending:
            self._pending.discard(model)
            self.stats.wasted += 1
            if model in self._early:  # loaded too early, perhaps: back off a step
                self._early[model] = max(0.0, self._early[model] - self.early_step)
            n = self._misses.get(model, 0) + 1
            self._misses[model] = n
            if n == self.max_misses:
                self.stats.given_up += 1
                self._gave_up[model] = self._gave_up.get(model, 0) + 1
