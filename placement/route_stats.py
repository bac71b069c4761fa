"""Per-route outcomes that every gateway counts in memory and flushes to Redis in batches, for rollout gates and
the shadow comparison report.

The warm path only calls `record` / `record_shadow`: dictionary updates, no I/O. `drain` hands the flusher
what was counted since the last flush; Redis keeps the sums of every gateway's flushes (`placement.store`,
rollout block), so any gateway reads the cluster's figures.

Latency goes into a `Sketch`: counts in fixed log-spaced buckets (each bound 20% above the last, from 0.1 ms),
so sketches from many gateways merge by adding counts and subtract (a window = now - a snapshot) the same way;
a quantile is the upper bound of its bucket, at most 20% above the true value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GROWTH = 1.2
FIRST_MS = 0.1
NBUCKETS = 80  # 0.1 ms * 1.2**79 is about 180 s; slower answers share the last bucket
DISAGREEMENTS_KEPT = 20
ANSWER_BYTES = 300  # of each answer kept with a disagreement


def bucket_of(seconds: float) -> int:
    ms = seconds * 1000.0
    if ms <= FIRST_MS:
        return 0
    return min(NBUCKETS - 1, math.ceil(math.log(ms / FIRST_MS) / math.log(GROWTH)))


def bucket_ms(index: int) -> float:
    """The upper bound of a bucket, in milliseconds."""
    return FIRST_MS * GROWTH**index


@dataclass(slots=True)
class Sketch:
    counts: dict[int, int] = field(default_factory=dict)

    def add(self, seconds: float) -> None:
        b = bucket_of(seconds)
        self.counts[b] = self.counts.get(b, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def minus(self, other: Sketch) -> Sketch:
        out = {b: n - other.counts.get(b, 0) for b, n in self.counts.items()}
        return Sketch({b: n for b, n in out.items() if n > 0})

    def quantile_ms(self, q: float) -> float | None:
        """The q-quantile (0..1) in ms, None without samples."""
        total = self.total
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return round(bucket_ms(b), 3)
        return round(bucket_ms(max(self.counts)), 3)


@dataclass(slots=True)
class ModelCounts:
    """One model's requests through one route: how many, how many failed, and their latencies."""

    requests: int = 0
    errors: int = 0
    latency: Sketch = field(default_factory=Sketch)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def minus(self, other: ModelCounts) -> ModelCounts:
        return ModelCounts(
            self.requests - other.requests, self.errors - other.errors, self.latency.minus(other.latency)
        )

    def merged(self, other: ModelCounts) -> ModelCounts:
        counts = dict(self.latency.counts)
        for b, n in other.latency.counts.items():
            counts[b] = counts.get(b, 0) + n
        return ModelCounts(self.requests + other.requests, self.errors + other.errors, Sketch(counts))

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "buckets": {str(b): n for b, n in self.latency.counts.items()},
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> ModelCounts:
        buckets = {int(b): int(n) for b, n in (data.get("buckets") or {}).items()}
        return ModelCounts(int(data.get("requests", 0)), int(data.get("errors", 0)), Sketch(buckets))

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "p50_ms": self.latency.quantile_ms(0.5),
            "p99_ms": self.latency.quantile_ms(0.99),
        }


SHADOW_OUTCOMES = ("sent", "agree", "disagree", "failed", "dropped")


@dataclass(slots=True)
class ShadowCounts:
    """One shadow model's comparison with a route's primary answers."""

    counts: dict[str, int] = field(default_factory=dict)
    primary: Sketch = field(default_factory=Sketch)
    shadow: Sketch = field(default_factory=Sketch)

    def n(self, outcome: str) -> int:
        return self.counts.get(outcome, 0)

    @property
    def agreement(self) -> float | None:
        compared = self.n("agree") + self.n("disagree")
        return self.n("agree") / compared if compared else None

    def minus(self, other: ShadowCounts) -> ShadowCounts:
        return ShadowCounts(
            {k: v - other.n(k) for k, v in self.counts.items()},
            self.primary.minus(other.primary),
            self.shadow.minus(other.shadow),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "primary": {str(b): n for b, n in self.primary.counts.items()},
            "shadow": {str(b): n for b, n in self.shadow.counts.items()},
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> ShadowCounts:
        return ShadowCounts(
            {k: int(v) for k, v in (data.get("counts") or {}).items()},
            Sketch({int(b): int(n) for b, n in (data.get("primary") or {}).items()}),
            Sketch({int(b): int(n) for b, n in (data.get("shadow") or {}).items()}),
        )


@dataclass(slots=True)
class RouteCounts:
    """Everything counted for one route: per split model, and per shadow model."""

    models: dict[str, ModelCounts] = field(default_factory=dict)
    shadows: dict[str, ShadowCounts] = field(default_factory=dict)

    def model(self, name: str) -> ModelCounts:
        return self.models.get(name) or ModelCounts()

    def shadow(self, name: str) -> ShadowCounts:
        return self.shadows.get(name) or ShadowCounts()

    def minus(self, base: RouteCounts) -> RouteCounts:
        return RouteCounts(
            {m: c.minus(base.model(m)) for m, c in self.models.items()},
            {m: c.minus(base.shadow(m)) for m, c in self.shadows.items()},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "models": {m: c.to_json() for m, c in self.models.items()},
            "shadows": {m: c.to_json() for m, c in self.shadows.items()},
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> RouteCounts:
        return RouteCounts(
            {m: ModelCounts.from_json(c) for m, c in (data.get("models") or {}).items()},
            {m: ShadowCounts.from_json(c) for m, c in (data.get("shadows") or {}).items()},
        )


@dataclass(frozen=True, slots=True)
class Disagreement:
    route: str
    model: str
    request_id: str
    primary: str
    shadow: str
    at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "model": self.model,
            "primary": self.primary,
            "shadow": self.shadow,
            "at": self.at,
        }


def clip(body: bytes) -> str:
    text = body[:ANSWER_BYTES].decode("utf-8", "replace")
    return text + ("..." if len(body) > ANSWER_BYTES else "")


@dataclass(slots=True)
class Batch:
    """What `RouteStats.drain` hands the flusher: additions to the cluster's sums."""

    routes: dict[str, RouteCounts] = field(default_factory=dict)
    disagreements: list[Disagreement] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.routes or self.disagreements)


class RouteStats:
    """This gateway's counts since the last flush. No I/O."""

    def __init__(self) -> None:
        self._batch = Batch()

    def _route(self, route: str) -> RouteCounts:
        rc = self._batch.routes.get(route)
        if rc is None:
            rc = self._batch.routes[route] = RouteCounts()
        return rc

    def record(self, route: str, model: str, failed: bool, seconds: float) -> None:
        rc = self._route(route)
        c = rc.models.get(model)
        if c is None:
            c = rc.models[model] = ModelCounts()
        c.requests += 1
        c.errors += int(failed)
        c.latency.add(seconds)

    def record_shadow(
        self, route: str, model: str, outcome: str, primary_s: float | None = None, shadow_s: float | None = None
    ) -> None:
        rc = self._route(route)
        c = rc.shadows.get(model)
        if c is None:
            c = rc.shadows[model] = ShadowCounts()
        c.counts[outcome] = c.counts.get(outcome, 0) + 1
        if primary_s is not None:
            c.primary.add(primary_s)
        if shadow_s is not None:
            c.shadow.add(shadow_s)

    def disagreement(self, d: Disagreement) -> None:
        self._batch.disagreements.append(d)
        del self._batch.disagreements[:-DISAGREEMENTS_KEPT]

    def drain(self) -> Batch:
        out, self._batch = self._batch, Batch()
        return out
