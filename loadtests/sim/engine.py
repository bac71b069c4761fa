"""The simulation: requests of a trace against backends with model-count and byte capacities, on a fake clock.

It drives modelyard's own decision objects, as `placement.loader.Loader._reserve` does: the `BackendChooser`
ranks the backends where the model fits (`BackendLoad.fits`), and when none has room the `EvictionPolicy` ranks
the ready copies and the first is evicted (`evicted` is then called), until the model fits. Simplifications,
stated: a request is served in no time once its model is ready (so nothing is ever in flight on a ready copy);
a request for a model being loaded waits for that load; loads on one backend run in parallel; unloads are
instant; the learned load cost of a model is its true cost once it has been loaded once (0 before); arrival
gaps are learned request by request (the gateways learn them per batched usage write).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from loadtests.sim.trace import Trace
from placement.arrivals import update_gap
from placement.clock import FakeClock
from placement.eviction import EvictionCandidate, EvictionPolicy
from placement.policy import BackendChooser, BackendLoad
from placement.prewarm import Prewarmer, prewarm_candidate
from placement.records import ModelSpec

TICK = 0.5  # how often the pre-warm leader looks (`PlacementSettings.prewarm_interval`'s default)


@dataclass(frozen=True)
class Backend:
    name: str
    models: int
    memory_bytes: int | None = None


@dataclass
class Result:
    policy: str
    requests: int = 0
    misses: int = 0  # demand loads started (pre-warms are counted in extra)
    load_seconds: float = 0.0
    bytes_loaded: int = 0
    waited: int = 0  # requests that waited for a load
    wait_seconds: float = 0.0
    evictions: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def miss_ratio(self) -> float:
        return self.misses / max(1, self.requests)


@dataclass
class _Copy:
    backend: str
    ready_at: float
    loaded_at: float = 0.0


class Simulation:
    def __init__(
        self,
        trace: Trace,
        backends: list[Backend],
        chooser: BackendChooser,
        policy: EvictionPolicy,
        clock: FakeClock,
        prewarmer: Prewarmer | None = None,
    ) -> None:
        self.prewarmer = prewarmer
        self.due: list[tuple[float, str, float]] = []  # pre-warms: (when, model, the last use they follow)
        self.expected: dict[str, float] = {}  # model -> when its pending pre-warm is due
        self.trace = trace
        self.backends = {b.name: b for b in backends}
        self.chooser = chooser
        self.policy = policy
        self.clock = clock
        self.copies: dict[str, _Copy] = {}
        self.used = {b.name: [0, 0] for b in backends}  # models, bytes
        self.last_used: dict[str, float] = {}
        self.requests: dict[str, int] = {}
        self.learned: dict[str, float] = {}
        self.arrived: dict[str, float] = {}  # last request of each model (the gateways' p:lastused)
        self.gaps: dict[str, float] = {}  # learned mean gap between requests (p:gaps)
        self.loading: list[tuple[float, str]] = []
        self.result = Result(policy.name)
        self.specs = {m: ModelSpec(m, "triton", memory_bytes=s) for m, s in trace.sizes.items()}

    def run(self) -> Result:
        for t, model in self.trace.requests:
            self._advance(t)
            self.request(model)
        if self.prewarmer is not None:
            st = self.prewarmer.stats
            self.result.extra.update(
                prewarm_loads=st.loads, prewarm_used=st.used, prewarm_given_up=st.given_up, prewarm_retried=st.retried
            )
        return self.result

    def _advance(self, t: float) -> None:
        """Move the clock to `t`, finishing loads and starting due pre-warms in time order on the way."""
        while True:
            load = self.loading[0][0] if self.loading else float("inf")
            due = self.due[0][0] if self.due else float("inf")
            if min(load, due) > t:
                break
            if load <= due:
                ready_at, model = heapq.heappop(self.loading)
                copy = self.copies.get(model)
                if copy is not None and copy.ready_at == ready_at:
                    copy.loaded_at = ready_at
                    self.learned[model] = self.trace.costs[model]
            else:
                when, model, stamp = heapq.heappop(self.due)
                self.clock.t = max(self.clock.t, when)
                if self.arrived.get(model) != stamp:
                    continue  # asked for before it was due
                if model not in self.copies:
                    self._prewarm(model)
                elif when + TICK < stamp + self.gaps.get(model, 0.0):
                    # Held now, perhaps not by then: look again next tick, as `PrewarmTask.tick` does.
                    heapq.heappush(self.due, (when + TICK, model, stamp))
        self.clock.t = max(self.clock.t, t)

    def request(self, model: str) -> None:
        now = self.clock.now()
        r = self.result
        r.requests += 1
        self.requests[model] = self.requests.get(model, 0) + 1
        gap = update_gap(self.gaps.get(model), self.arrived.get(model), now, 1)
        if gap is not None:
            self.gaps[model] = gap
        self.arrived[model] = now
        if self.prewarmer is not None:
            if self.expected.pop(model, now) > now and model not in self.copies:
                self.prewarmer.late(model)  # its request came before the pre-warm was due
            self.prewarmer.served(model)
            due = self.prewarmer.due_at(model, now, self.gaps.get(model, 0.0), self.trace.costs[model])
            if due is not None and due > now:
                heapq.heappush(self.due, (due, model, now))
                self.expected[model] = due
        copy = self.copies.get(model)
        if copy is None:
            copy = self._load(model)
        if copy.ready_at > now:
            r.waited += 1
            r.wait_seconds += copy.ready_at - now
        self.last_used[model] = max(now, copy.ready_at)

    def _loads(self) -> list[BackendLoad]:
        return [
            BackendLoad(b.name, self.used[b.name][0], b.models, self.used[b.name][1], b.memory_bytes)
            for b in self.backends.values()
        ]

    def candidates(self) -> list[EvictionCandidate]:
        now = self.clock.now()
        return [
            EvictionCandidate(
                m,
                c.backend,
                self.last_used.get(m, c.loaded_at),
                memory_bytes=self.trace.sizes[m],
                loaded_at=c.loaded_at,
                requests=self.requests.get(m, 0),
                load_seconds=self.learned.get(m, 0.0),
                mean_gap=self.gaps.get(m, 0.0),
                last_request=self.last_used.get(m, 0.0),
            )
            for m, c in self.copies.items()
            if c.ready_at <= now
        ]

    def _prewarm(self, model: str) -> None:
        """Load `model` ahead of its expected request, as `Loader.prewarm` does: into free room, or in place of
        copies the eviction policy scores below the pre-warm (`prewarm_candidate`), never waiting for a slot."""
        assert self.prewarmer is not None
        spec = self.specs[model]
        worth = self.policy.score(
            prewarm_candidate(
                model,
                self.last_used.get(model, 0.0),
                self.gaps.get(model, 0.0),
                self.learned.get(model, 0.0),
                spec.memory_bytes,
                self.clock.now(),
            )
        )
        while True:
            loads = [b for b in self._loads() if b.could_ever_fit(spec)]
            if any(b.fits(spec) for b in loads):
                break
            ranked = self.policy.rank(self.candidates())
            if not ranked or self.policy.score(ranked[0]) >= worth:
                return
            self._evict(ranked[0])
        self.prewarmer.started(model)
        self._start_load(model)

    def _load(self, model: str) -> _Copy:
        spec = self.specs[model]
        while True:
            loads = [b for b in self._loads() if b.could_ever_fit(spec)]
            if not loads:
                raise ValueError(f"{model} fits no backend")
            fitting = self.chooser.rank(spec, [b for b in loads if b.fits(spec)])
            if fitting:
                break
            ranked = self.policy.rank(self.candidates())
            if ranked:
                self._evict(ranked[0])
            elif self.loading:
                # Every slot is held by a load: wait for the first to finish, as the loader polls for a slot.
                self._advance(self.loading[0][0])
            else:
                raise ValueError(f"{model} can't be placed")
        self.result.misses += 1
        return self._start_load(model)

    def _start_load(self, model: str) -> _Copy:
        spec = self.specs[model]
        fitting = self.chooser.rank(spec, [b for b in self._loads() if b.fits(spec)])
        backend = fitting[0].backend
        cost = self.trace.costs[model]
        copy = _Copy(backend, self.clock.now() + cost)
        self.copies[model] = copy
        self.used[backend][0] += 1
        self.used[backend][1] += spec.memory_bytes
        heapq.heappush(self.loading, (copy.ready_at, model))
        r = self.result
        r.load_seconds += cost
        r.bytes_loaded += spec.memory_bytes
        return copy

    def _evict(self, cand: EvictionCandidate) -> None:
        copy = self.copies.pop(cand.model)
        self.used[copy.backend][0] -= 1
        self.used[copy.backend][1] -= self.trace.sizes[cand.model]
        self.policy.evicted(cand)
        self.result.evictions += 1
        if self.prewarmer is not None:
            self.prewarmer.evicted(cand.model)
