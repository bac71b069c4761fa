"""Per-backend counts of placement events over the last minute, for the live placement page (`GET /admin/stats`).

Prometheus answers "per minute" with `rate()`; the page has no Prometheus behind it, so this gateway keeps
plain counters per backend (hits, misses, loads, load failures, evictions) and snapshots of them, taken at most
every `every` seconds when the page asks and by the gateway's periodic task. A rate is the difference between
now and the oldest snapshot of the last `window` seconds (since the gateway started, when that is sooner).
`recent` keeps the last loads, failed loads and evictions (model, backend, seconds or idle time) for the page's
activity list. The counts are this gateway's: with several gateways, each page shows the gateway it reads.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

KINDS = ("hits", "misses", "loads", "load_failures", "evictions")


class BackendStats:
    def __init__(
        self,
        window: float = 60.0,
        every: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        recent: int = 20,
    ) -> None:
        self.window = window
        self.wall = wall
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=recent)
        self.every = every
        self.clock = clock
        self.counts: dict[str, dict[str, int]] = {}
        self._snapshots: collections.deque[tuple[float, dict[str, dict[str, int]]]] = collections.deque()
        self._snapshots.append((clock(), {}))

    def add(self, backend: str, kind: str, n: int = 1) -> None:
        counts = self.counts.get(backend)
        if counts is None:
            counts = self.counts[backend] = dict.fromkeys(KINDS, 0)
        counts[kind] += n

    def note(self, kind: str, model: str, backend: str, **values: float) -> None:
        """One event for the activity list (cold path only: loads and evictions)."""
        self.recent.append({"t": round(self.wall(), 3), "kind": kind, "model": model, "backend": backend, **values})

    def snapshot(self) -> None:
        now = self.clock()
        if now - self._snapshots[-1][0] >= self.every:
            self._snapshots.append((now, {b: dict(c) for b, c in self.counts.items()}))
        # Keep the newest snapshot older than the window: it is the base of a full window's rates.
        while len(self._snapshots) > 1 and self._snapshots[1][0] <= now - self.window:
            self._snapshots.popleft()

    def rates(self) -> dict[str, Any]:
        """Per backend and in all: each kind per minute over the window, and the hit ratio (None: no request)."""
        self.snapshot()
        now = self.clock()
        base_t, base = self._snapshots[0]
        for t, snap in self._snapshots:  # the oldest snapshot inside the window, else the newest before it
            if t >= now - self.window:
                break
            base_t, base = t, snap
        elapsed = max(now - base_t, 1e-9)
        total = dict.fromkeys(KINDS, 0)
        backends: dict[str, Any] = {}
        for bid, counts in sorted(self.counts.items()):
            before = base.get(bid, {})
            delta = {k: counts[k] - before.get(k, 0) for k in KINDS}
            for k in KINDS:
                total[k] += delta[k]
            backends[bid] = _describe(delta, elapsed, counts)
        return {
            "window_seconds": round(min(elapsed, self.window), 1),
            "recent": list(reversed(self.recent)),
            "all": _describe(total, elapsed, {k: sum(c[k] for c in self.counts.values()) for k in KINDS}),
            "backends": backends,
        }


def _describe(delta: dict[str, int], elapsed: float, counts: dict[str, int]) -> dict[str, Any]:
    asked = delta["hits"] + delta["misses"]
    out: dict[str, Any] = {f"{k}_per_minute": round(delta[k] * 60.0 / elapsed, 2) for k in KINDS}
    out["hit_ratio"] = None if asked == 0 else round(delta["hits"] / asked, 4)
    out["totals"] = dict(counts)
    return out
