"""Names a gateway has not heard of yet, looked up in Redis before a 404.

A gateway learns of a new model or route from a pub/sub event, which may arrive after the client that created
it (through another gateway) calls this one. So a name missing from the view is read from Redis once before the
gateway answers 404; a record found goes into the view. Only names the view lacks get here: the warm path never
does.

Unknown names must not turn into a stream of Redis reads, so the answers are bounded:

- concurrent lookups of one name share one read;
- a name found unknown is remembered for `negative_ttl` seconds (at most `max_negative` names, the oldest
  forgotten first), and forgotten at once when an event names it or the view is reloaded;
- a remembered name is still asked again while a small budget of re-checks lasts (`recheck_rate` per second):
  so a name created elsewhere just after this gateway answered "unknown" is found before its event arrives,
  while a flood of the same unknown names is answered from memory once the budget is spent;
- lookups that do reach Redis are held to `rate` per second (a token bucket of `burst`); past it, an unknown
  name is answered 404 without a lookup and counted (`refused`). Re-checks have their own budget, so a flood
  of repeated names can't use up the lookups of new ones.

The race where a lookup reads "unknown" just before the name is created: the create's event arrives before or
after the read returns. Before: the event marks the lookup stale, and its "unknown" is not remembered. After:
the event removes the remembered answer. Either way the name is not hidden past its event.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from placement.clock import Clock
from placement.records import ModelSpec, RouteSpec
from placement.redis_health import RedisHealth
from placement.store import RedisStore
from placement.view import PlacementView


@dataclass(slots=True)
class _Pending:
    task: asyncio.Task[bool]
    stale: bool = False


class TokenBucket:
    """`rate` tokens a second, at most `burst` kept; time from the injected clock."""

    def __init__(self, clock: Clock, rate: float, burst: float) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._filled = clock.now()

    def take(self) -> bool:
        now = self.clock.now()
        self._tokens = min(self.burst, self._tokens + (now - self._filled) * self.rate)
        self._filled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


@dataclass(slots=True)
class LookupCounts:
    found: int = 0  # read from Redis and put into the view
    unknown: int = 0  # read from Redis: not registered
    cached: int = 0  # answered unknown from the remembered answers
    joined: int = 0  # shared a lookup already under way
    refused: int = 0  # over the rate budget: answered unknown without a lookup

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("found", "unknown", "cached", "joined", "refused")}


class NameLookup:
    def __init__(
        self,
        store: RedisStore,
        view: PlacementView,
        health: RedisHealth,
        clock: Clock,
        *,
        negative_ttl: float = 2.0,
        max_negative: int = 10_000,
        rate: float = 100.0,
        burst: float = 100.0,
        recheck_rate: float = 20.0,
        recheck_burst: float = 20.0,
    ) -> None:
        self.store = store
        self.view = view
        self.health = health
        self.clock = clock
        self.negative_ttl = negative_ttl
        self.max_negative = max_negative
        self.counts = LookupCounts()
        self._negative: dict[str, float] = {}  # name -> until when it is answered unknown (insertion ordered)
        self._pending: dict[str, _Pending] = {}
        self._budget = TokenBucket(clock, rate, burst)
        self._rechecks = TokenBucket(clock, recheck_rate, recheck_burst)

    def known(self, name: str) -> bool:
        return name in self.view.models or name in self.view.routes

    async def find(self, name: str) -> bool:
        """True when `name` is a model or route (now in the view); False when it is not registered (or, over the
        rate budget, not looked up). Raises `StoreUnavailable` when Redis can't be asked."""
        if self.known(name):
            return True
        until = self._negative.get(name)
        recheck = False
        if until is not None:
            if until > self.clock.now() and not self._rechecks.take():
                self.counts.cached += 1
                return False
            recheck = until > self.clock.now()
            del self._negative[name]
        pending = self._pending.get(name)
        if pending is not None:
            self.counts.joined += 1
            return await asyncio.shield(pending.task)
        if not recheck and not self._budget.take():
            self.counts.refused += 1
            return False
        self.health.check()
        task = asyncio.ensure_future(self._lookup(name))
        self._pending[name] = _Pending(task)
        task.add_done_callback(lambda _t: self._pending.pop(name, None))
        return await asyncio.shield(task)

    def forget(self, name: str | None) -> None:
        """An event named `name` (None: the view was reloaded): drop what was remembered about it, and don't
        remember the answer of a lookup under way."""
        if name is None:
            self._negative.clear()
            for p in self._pending.values():
                p.stale = True
            return
        self._negative.pop(name, None)
        pending = self._pending.get(name)
        if pending is not None:
            pending.stale = True

    async def _lookup(self, name: str) -> bool:
        with self.health.guard():
            model = await self.store.get_model_spec(name)
            route = None if model is not None else await self.store.get_route(name)
            needed: dict[str, ModelSpec | None] = {}
            if route is not None:
                for m in route.models:
                    if m not in self.view.models:
                        needed[m] = await self.store.get_model_spec(m)
        pending = self._pending.get(name)
        if pending is not None and pending.stale:
            return self.known(name)  # an event about it was applied meanwhile: the view has the truth
        if model is not None:
            self.view.set_model(name, model)
        elif route is not None:
            self._add_route(route, needed)
        else:
            self.counts.unknown += 1
            self._remember_unknown(name)
            return False
        self.counts.found += 1
        return True

    def _add_route(self, route: RouteSpec, models: dict[str, ModelSpec | None]) -> None:
        for m, spec in models.items():
            if spec is not None and m not in self.view.models:
                self.view.set_model(m, spec)
        self.view.set_route(route.name, route)

    def _remember_unknown(self, name: str) -> None:
        while len(self._negative) >= self.max_negative:
            del self._negative[next(iter(self._negative))]
        self._negative[name] = self.clock.now() + self.negative_ttl
