"""Prometheus metrics of the gateway, on a registry passed in (never a global created at import)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "modelyard_requests",
            "Data-plane requests by protocol, operation and status code.",
            ["protocol", "op", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "modelyard_request_seconds",
            "Whole data-plane request latency, as the gateway saw it.",
            ["protocol", "op"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.placement = Counter(
            "modelyard_placement",
            "Requests that found a warm copy (hit) or needed a load (miss).",
            ["result"],
            registry=registry,
        )
        self.cold_wait = Histogram(
            "modelyard_cold_wait_seconds",
            "Time requests spent waiting for a cold load.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.load_seconds = Histogram(
            "modelyard_load_seconds",
            "How long loads this gateway did took.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.eviction_idle = Histogram(
            "modelyard_eviction_idle_seconds",
            "How long each evicted copy had been idle: low values mean the cache is thrashing.",
            buckets=(1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600, 7200, 21600, 86400),
            registry=registry,
        )
        self.retries = Counter(
            "modelyard_retries",
            "Requests retried transparently, by reason: model_not_loaded (the copy went away), unavailable (the "
            "backend refused or dropped the connection), status_503 (the backend answered 503 / UNAVAILABLE).",
            ["reason"],
            registry=registry,
        )
        self.retries_refused = Counter(
            "modelyard_retries_refused",
            "Retries not made: budget (the retry budget was spent) or no_copy (no other ready copy).",
            ["reason"],
            registry=registry,
        )
        self.hedges = Counter(
            "modelyard_hedges",
            "Hedged requests: sent (a second copy was asked), won (the hedge answered first), refused_budget (the "
            "hedge budget was spent), no_copy (no ready copy on another backend when the delay passed).",
            ["result"],
            registry=registry,
        )
        # Labelled by route (and model): operator-defined names, capped so that churn can't grow them forever.
        self.route_requests = CappedLabels(
            Counter(
                "modelyard_route_requests",
                "Requests to routes, by route and the model it resolved to.",
                ["route", "model"],
                registry=registry,
            )
        )
        self.shadows = CappedLabels(
            Counter(
                "modelyard_shadows",
                "Shadow requests by route: sent, and of those failed (error or no answer), agree or disagree "
                "(compared with the primary's answer).",
                ["route", "result"],
                registry=registry,
            )
        )
        self.shadow_dropped = CappedLabels(
            Counter(
                "modelyard_shadows_dropped",
                "Shadow requests dropped before they were sent, by route and reason: queue_full (the shadow "
                "workers fell behind) or cold (the shadow model had no ready copy; shadows never load one).",
                ["route", "reason"],
                registry=registry,
            )
        )

    def watch(self, name: str, collect: Callable[[], Iterator[CounterMetricFamily | GaugeMetricFamily]]) -> None:
        """Expose values owned elsewhere (placement counters, Redis calls) at scrape time."""
        self.registry.register(_FnCollector(collect))


class CappedLabels:
    """A labelled metric whose children are cached (`.labels()` costs on the warm path) and capped: past
    `cap` distinct label sets, new ones are counted under "other"."""

    def __init__(self, metric: Any, cap: int = 1000) -> None:
        self.metric = metric
        self.cap = cap
        self._children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            if len(self._children) >= self.cap:
                values = ("other",) * len(values)
                child = self._children.get(values)
            if child is None:
                child = self._children[values] = self.metric.labels(*values)
        return child


class _FnCollector(Collector):
    def __init__(self, fn: Callable[[], Iterator[CounterMetricFamily | GaugeMetricFamily]]) -> None:
        self.fn = fn

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield from self.fn()
