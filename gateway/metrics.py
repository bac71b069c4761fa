"""Prometheus metrics of the gateway, on a registry passed in (never a global created at import).

Every metric and its labels are documented in docs/metrics.md; `tests/gateway/test_metrics_docs.py` checks that
the two agree. Label cardinality stays bounded with thousands of models:

- `model` and `route` labels carry a name only for the names a `LabelPolicy` chooses (`--metrics-models`): an
  explicit list, and/or the top N by traffic (`NameLabels`); every other name is counted under `_other`, and a
  name that loses its place has its series removed, so the number of series does not grow with churn.
- Labelled children are bound once and cached (`Family`): `.labels()` costs a lock and a hash of every value,
  measurable on the warm path, so the hot path does one dict lookup per metric instead.

Values owned elsewhere (placement's view, Redis call counts) are read at scrape time through `watch`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
IDLE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600, 7200, 21600, 86400)
OTHER = "_other"  # the label value of every name without a label of its own
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True, slots=True)
class LabelPolicy:
    """Which model and route names get a label of their own (`--metrics-models`).

    `top`: the N names with the most traffic (each of models and routes has its own N); 0: none by traffic.
    `names`: names that always get their own label, traffic or not.
    """

    top: int = 50
    names: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, text: str) -> LabelPolicy:
        """`top:50`, `none`, `fraud-v3,resnet-7`, or both: `top:20,fraud-v3` (comma-separated)."""
        top = 0
        names: set[str] = set()
        for item in (part.strip() for part in text.split(",")):
            if not item or item == "none":
                continue
            if item.startswith("top:"):
                try:
                    top = int(item[4:])
                except ValueError:
                    raise ValueError(f"top:N needs a whole number, got {item!r}") from None
                if top < 0 or top > 10_000:
                    raise ValueError(f"top:N must be between 0 and 10000, got {top}")
            elif _NAME.match(item) and item != OTHER:
                names.add(item)
            else:
                raise ValueError(f"{item!r} is neither top:N, none, nor a model or route name")
        return cls(top, frozenset(names))

    def describe(self) -> str:
        parts = [f"top:{self.top}"] if self.top else []
        return ",".join(parts + sorted(self.names)) or "none"


class NameLabels:
    """The label value of each model (or route) name: itself when chosen, else `_other`.

    The warm path calls `label` (one dict lookup) and `count` (one dict update). While fewer than `top` names
    were chosen by traffic, a name seen for the first time takes a free place at once; `rebalance`, run every
    minute or so, ranks names by traffic (halved at each run, so the ranking follows the current traffic) and
    lets an outsider replace the weakest member only when it has clearly more traffic (twice as much, and
    `MIN_LEAD` requests more), so names of similar traffic don't swap places (and make new series) at every run.
    Names that lose their place go to `on_forget`: their series are removed, so churn doesn't add up.
    """

    MARGIN = 2.0
    MIN_LEAD = 10.0
    DECAY = 0.5

    def __init__(self, policy: LabelPolicy) -> None:
        self.policy = policy
        self._own: dict[str, str] = {n: n for n in policy.names}
        self._top: set[str] = set()
        self._recent: dict[str, int] = {}
        self._score: dict[str, float] = {}
        self.on_forget: list[Callable[[str], None]] = []

    def label(self, name: str) -> str:
        own = self._own.get(name)
        if own is not None:
            return own
        if len(self._top) < self.policy.top:
            self._top.add(name)
            self._own[name] = name
            return name
        return OTHER

    def count(self, name: str) -> None:
        self._recent[name] = self._recent.get(name, 0) + 1

    @property
    def chosen(self) -> int:
        return len(self._own)

    def rebalance(self) -> list[str]:
        """Re-rank names by recent traffic; returns the names that lost their label."""
        score = self._score
        for name in list(score):
            score[name] *= self.DECAY
        for name, n in self._recent.items():
            score[name] = score.get(name, 0.0) + n
        self._recent.clear()
        for name in [n for n, s in score.items() if s < 0.01 and n not in self._top]:
            del score[name]  # names with no traffic for a while are forgotten: the dict stays bounded
        if self.policy.top == 0:
            return []
        ranked = sorted(score, key=lambda n: score[n], reverse=True)[: self.policy.top]
        wanted = set(ranked)
        weakest = sorted((n for n in self._top if n not in wanted), key=lambda n: score.get(n, 0.0))
        dropped: list[str] = []
        for name in ranked:
            if name in self._own:
                continue
            if len(self._top) < self.policy.top:
                self._admit(name)
            elif weakest and score[name] > self.MARGIN * score.get(weakest[0], 0.0) + self.MIN_LEAD:
                out = weakest.pop(0)
                self._top.discard(out)
                del self._own[out]
                dropped.append(out)
                self._admit(name)
            else:
                break
        for name in dropped:
            for forget in self.on_forget:
                forget(name)
        return dropped

    def _admit(self, name: str) -> None:
        self._top.add(name)
        self._own[name] = name


class Family:
    """A labelled metric whose children are bound once and cached.

    `child(*values)` takes label values already mapped (model and route names through their `NameLabels`) and
    is what the warm path calls. `labels(*values)` maps the name positions itself: the `.labels()` of
    prometheus_client, bounded and cached, for code outside the hot loop (routes, hedges, shadows). When a name
    loses its label, every series holding it is removed.
    """

    def __init__(self, metric: Any, names: dict[int, NameLabels] | None = None) -> None:
        self.metric = metric
        self._names = names or {}
        self._children: dict[tuple[str, ...], Any] = {}
        for pos, labels in self._names.items():
            labels.on_forget.append(functools.partial(self._forget, pos))

    def child(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child

    def labels(self, *values: str) -> Any:
        if self._names:
            mapped = list(values)
            for pos, labels in self._names.items():
                if mapped[pos]:
                    mapped[pos] = labels.label(mapped[pos])
            values = tuple(mapped)
        return self.child(*values)

    def _forget(self, pos: int, name: str) -> None:
        for key in [k for k in self._children if k[pos] == name]:
            del self._children[key]
            try:
                self.metric.remove(*key)
            except KeyError:
                pass


# Kept for code written against the routes branch's helper of the same name: the same `.labels()` contract.
CappedLabels = Family


class Metrics:
    def __init__(self, registry: CollectorRegistry, policy: LabelPolicy | None = None) -> None:
        self.registry = registry
        self.policy = policy or LabelPolicy()
        self.models = NameLabels(self.policy)
        self.routes = NameLabels(self.policy)
        # -- data plane -------------------------------------------------------------------------------------
        self.requests = self._counter(
            "modelyard_requests",
            "Data-plane requests by front end, operation, status code, route, model and backend.",
            ["protocol", "op", "code", "route", "model", "backend"],
            {3: self.routes, 4: self.models},
        )
        self.latency = self._histogram(
            "modelyard_request_seconds",
            "Whole data-plane request latency, as the gateway saw it (cold loads included).",
            ["protocol", "op", "model"],
            LATENCY_BUCKETS,
            {2: self.models},
        )
        self.backend_latency = self._histogram(
            "modelyard_backend_request_seconds",
            "One call to a backend (each retry, hedge and shadow is a call of its own).",
            ["backend", "api"],
            LATENCY_BUCKETS,
        )
        self.backend_requests = self._counter(
            "modelyard_backend_requests",
            "Calls to backends by outcome: ok (any answer but a 5xx / failed gRPC status), error (such an "
            "answer), timeout, unavailable (not reached), not_loaded (the backend no longer held the model).",
            ["backend", "api", "outcome"],
        )
        # -- placement --------------------------------------------------------------------------------------
        self.placement = self._counter(
            "modelyard_placement",
            "Requests that found a warm copy (hit) or needed a load (miss), by the backend that served them.",
            ["result", "backend"],
        )
        self.cold_wait = Histogram(
            "modelyard_cold_wait_seconds",
            "Time requests spent waiting for a cold load (whether they started it or joined it).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.load_joins = Counter(
            "modelyard_load_joins", "Requests that joined a load already under way in this gateway.", registry=registry
        )
        self.loads = self._counter(
            "modelyard_loads",
            "Model loads this gateway did, by backend and result (ok, failed).",
            ["backend", "result"],
        )
        self.load_seconds = self._histogram(
            "modelyard_load_seconds",
            "How long loads this gateway did took, by backend and result.",
            ["backend", "result"],
            LOAD_BUCKETS,
        )
        self.unloads = self._counter(
            "modelyard_unloads",
            "Copies this gateway unloaded, by backend, reason (evicted, admin, drain, failed) and result (ok, "
            "failed: the copy keeps its slot and reconciliation retries).",
            ["backend", "reason", "result"],
        )
        self.evictions = self._counter(
            "modelyard_evictions",
            "Copies this gateway evicted to make room (= unloads with reason evicted and result ok).",
            ["backend"],
        )
        self.eviction_idle = self._histogram(
            "modelyard_eviction_idle_seconds",
            "How long each evicted copy had been idle: low values mean the cache is thrashing.",
            ["backend"],
            IDLE_BUCKETS,
        )
        self.prewarm_loads = self._counter(
            "modelyard_prewarm_loads",
            "Pre-warms this gateway did as the pre-warm leader (--prewarm on), by result: loaded (a copy was "
            "loaded ahead of its expected request), skipped (no room it may take, or a load under way), failed, "
            "and how loaded copies ended: used (asked for before eviction), wasted (evicted unused); given_up "
            "counts models whose pre-warms kept missing and are no longer pre-warmed.",
            ["result"],
        )
        self.ejections = self._counter(
            "modelyard_backend_ejections",
            "Times this gateway's data plane ejected a backend from its rotation (failures in a row).",
            ["backend"],
        )
        # -- routes, retries, hedges, shadows (gateway.dataplane and its helpers move these) ------------------
        self.retries = self._counter(
            "modelyard_retries",
            "Requests retried transparently, by reason: model_not_loaded (the copy went away), unavailable (the "
            "backend refused or dropped the connection), status_503 (the backend answered 503 / UNAVAILABLE).",
            ["reason"],
        )
        self.retries_refused = self._counter(
            "modelyard_retries_refused",
            "Retries not made: budget (the retry budget was spent) or no_copy (no other ready copy).",
            ["reason"],
        )
        self.hedges = self._counter(
            "modelyard_hedges",
            "Hedged requests: sent (a second copy was asked), won (the hedge answered first), refused_budget "
            "(the hedge budget was spent), no_copy (no ready copy on another backend when the delay passed).",
            ["result"],
        )
        self.route_requests = self._counter(
            "modelyard_route_requests",
            "Requests to routes, by route and the model it resolved to.",
            ["route", "model"],
            {0: self.routes, 1: self.models},
        )
        self.shadows = self._counter(
            "modelyard_shadows",
            "Shadow requests by route: sent, and of those failed (error or no answer), agree or disagree "
            "(compared with the primary's answer).",
            ["route", "result"],
            {0: self.routes},
        )
        self.shadow_dropped = self._counter(
            "modelyard_shadows_dropped",
            "Shadow requests dropped before they were sent, by route and reason: queue_full (the shadow workers "
            "fell behind) or cold (the shadow model had no ready copy; shadows never load one).",
            ["route", "reason"],
            {0: self.routes},
        )
        # -- rollouts (placement.rollouts; set through gateway.app). Rollouts are few: names are labels as they are.
        self.rollout_weight = Family(
            Gauge(
                "modelyard_rollout_weight",
                "Percent of a route's requests its rollout gives the candidate model (100 once promoted, 0 once "
                "rolled back or aborted), as this gateway last read the rollout.",
                ["route", "model"],
                registry=self.registry,
            )
        )
        self.rollouts = self._counter(
            "modelyard_rollouts",
            "Rollouts this gateway ended as the rollout leader or by an operator's call, by route and result: "
            "promoted, rolled_back, aborted.",
            ["route", "result"],
        )

    def _counter(self, name: str, doc: str, labels: list[str], names: dict[int, NameLabels] | None = None) -> Family:
        return Family(Counter(name, doc, labels, registry=self.registry), names)

    def _histogram(
        self,
        name: str,
        doc: str,
        labels: list[str],
        buckets: tuple[float, ...],
        names: dict[int, NameLabels] | None = None,
    ) -> Family:
        return Family(Histogram(name, doc, labels, buckets=buckets, registry=self.registry), names)

    def rebalance(self) -> list[str]:
        """Re-rank model and route names by traffic (see `NameLabels`); returns the names that lost a label."""
        return self.models.rebalance() + self.routes.rebalance()

    def watch(self, name: str, collect: Callable[[], Iterable[CounterMetricFamily | GaugeMetricFamily]]) -> None:
        """Expose values owned elsewhere (placement's view, Redis calls) at scrape time."""
        self.registry.register(_FnCollector(collect))


class _FnCollector(Collector):
    def __init__(self, fn: Callable[[], Iterable[CounterMetricFamily | GaugeMetricFamily]]) -> None:
        self.fn = fn

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield from self.fn()
