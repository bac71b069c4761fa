"""Rollouts as a service: the admin calls, and the background work every gateway runs.

Every gateway flushes its route counts (`placement.route_stats`) to Redis every `flush_interval` and, every
`tick_interval`, reads the rollouts' states (for metrics and the live page). One gateway at a time, holding the
rollout lease (renewed while it lives; another takes over within `3 * tick_interval` of its death), also drives
them: it decides (`placement.rollout`) and writes the state together with the route (`RedisStore.rollout_write`,
checked against the state's version, so a stale leader can't write). The route change reaches every gateway
through the route event, like any route write. State lives in Redis only: a restarted gateway resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from placement.clock import Clock
from placement.errors import BadReference, Conflict, NotFound
from placement.records import RouteSpec, check_name
from placement.rollout import RUNNING, RolloutSpec, Verdict, apply, end, evaluate, start, step_figures, window_of
from placement.route_stats import RouteStats
from placement.store import RedisStore
from placement.tasks import sleep_or_stop, stop_task
from placement.view import PlacementView

log = logging.getLogger("modelyard.rollout")
LEASE = "__rollout__"


class Rollouts:
    def __init__(
        self,
        store: RedisStore,
        view: PlacementView,
        stats: RouteStats,
        clock: Clock,
        tick_interval: float = 1.0,
        flush_interval: float = 0.5,
    ) -> None:
        self.store = store
        self.view = view
        self.stats = stats
        self.clock = clock
        self.tick_interval = tick_interval
        self.flush_interval = flush_interval
        self.states: dict[str, dict[str, Any]] = {}  # as last read, for metrics and /ui
        # Hooks for the gateway's metrics: every state read or written, and every rollout this gateway ended.
        self.on_state: Callable[[dict[str, Any]], None] = lambda _state: None
        self.on_end: Callable[[str, str], None] = lambda _route, _result: None
        self._token: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    # -- admin ---------------------------------------------------------------------------------------------
    async def start_rollout(self, route: str, body: Any) -> dict[str, Any]:
        check_name("route", route)
        spec = RolloutSpec.parse(body)
        current = await self.store.get_route(route)
        if current is None:
            raise NotFound(f"route {route!r} is not registered")
        candidate = await self.store.get_model_spec(spec.model)
        if candidate is None:
            raise BadReference(f"model {spec.model!r} is not registered; register it with PUT /admin/models/{{name}}")
        for name in current.models:
            other = await self.store.get_model_spec(name)
            if other is not None and other.runtime != candidate.runtime:
                raise BadReference(
                    f"model {spec.model!r} runs on {candidate.runtime} but route {route!r} serves {other.runtime} "
                    f"models ({name!r}); one client protocol can't call both"
                )
        if not any(s.weight > 0 for s in current.splits if s.model != spec.model):
            raise BadReference(f"route {route!r} has no other model with a positive weight to take traffic from")
        existing = await self.store.rollout_get(route)
        if existing is not None and existing["phase"] in RUNNING:
            raise Conflict(f"a rollout of {existing['model']!r} is already running on route {route!r}")
        state, new_route = start(current, spec, self.clock.now(), await self.store.route_counts(route))
        result = await self.store.rollout_write(route, None, state, new_route)
        if result == "gone":
            raise NotFound(f"route {route!r} is not registered")
        if result != "ok":
            raise Conflict(f"a rollout is already running on route {route!r}")
        self.view.set_route(route, new_route)
        self._remember(route, state)
        log.info("rollout of %s on route %s started: %s at %s%%", spec.model, route, state["phase"], state["weight"])
        return await self.status(route)

    async def status(self, route: str) -> dict[str, Any]:
        state = await self._get(route)
        out = {k: state[k] for k in ("route", "model", "phase", "step", "weight", "reason", "gate", "started_at")}
        out["steps"] = list(state["history"])
        out["spec"] = state["spec"]
        if state["phase"] in RUNNING:
            window = window_of(state, await self.store.route_counts(route))
            out["steps"].append({**step_figures(state, window), "result": "running"})
        return out

    async def finish(self, route: str, phase: str) -> dict[str, Any]:
        """`promoted` (POST .../promote) or `aborted` (DELETE)."""
        for _ in range(10):  # the leader may write between our read and our write: read again
            state = await self._get(route)
            if state["phase"] not in RUNNING:
                raise Conflict(f"the rollout on route {route!r} is over ({state['phase']}); nothing to {phase[:-2]}")
            reason = "promoted by an operator" if phase == "promoted" else "aborted by an operator"
            new, spec = end(state, phase, reason, self.clock.now())
            result = await self.store.rollout_write(route, state["version"], new, spec)
            if result == "gone":
                raise NotFound(f"route {route!r} was deleted; its rollout ends with the next leader's look")
            if result == "ok":
                self._ended(route, new, spec)
                return await self.status(route)
        raise Conflict(f"the rollout on route {route!r} kept changing; try again")

    async def _get(self, route: str) -> dict[str, Any]:
        state = await self.store.rollout_get(check_name("route", route))
        if state is None:
            raise NotFound(f"route {route!r} has no rollout; start one with PUT /admin/routes/{route}/rollout")
        return state

    # -- background ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(self.flush_interval, self.flush), name="modelyard-route-stats-flush"),
            asyncio.create_task(self._loop(self.tick_interval, self.tick), name="modelyard-rollouts"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            await stop_task(t, self._stop)
        with contextlib.suppress(Exception):
            await self.flush()

    async def _loop(self, interval: float, fn: Any) -> None:
        while not await sleep_or_stop(self._stop, interval):
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("rollouts: %s failed", fn.__name__)

    async def flush(self) -> None:
        await self.store.flush_route_stats(self.stats.drain())

    async def tick(self) -> None:
        """Read every rollout; as the leader, decide on the running ones."""
        leader = await self._lead()
        for route in await self.store.rollout_routes():
            state = await self.store.rollout_get(route)
            if state is None:
                continue
            self._remember(route, state)
            if leader and state["phase"] in RUNNING:
                await self.drive(route, state)

    async def refresh(self) -> dict[str, dict[str, Any]]:
        """Every rollout as Redis has it now (what an admin read shows), remembered for metrics and /ui."""
        for route in await self.store.rollout_routes():
            state = await self.store.rollout_get(route)
            if state is not None:
                self._remember(route, state)
        return self.states

    async def _lead(self) -> bool:
        ttl = int(self.tick_interval * 3000)
        if self._token is not None and await self.store.lease_renew(LEASE, self._token, ttl):
            return True
        self._token = await self.store.lease_try(LEASE, ttl)
        return self._token is not None

    async def drive(self, route: str, state: dict[str, Any]) -> None:
        counts = await self.store.route_counts(route)
        now = self.clock.now()
        verdict: Verdict = evaluate(state, window_of(state, counts), now)
        new, spec = apply(state, verdict, now, counts)
        if spec is None and new is state:
            return
        result = await self.store.rollout_write(route, state["version"], new, spec)
        if result == "gone":  # the route was deleted under the rollout: end it, write no route
            new, spec = end(state, "aborted", "the route was deleted", now)[0], None
            result = await self.store.rollout_write(route, state["version"], new, None)
        if result != "ok":
            return  # someone else wrote first (an operator, a former leader): decide again next tick
        self._remember(route, new)
        if new["phase"] in RUNNING:
            if spec is not None:
                self.view.set_route(route, spec)
            log.info("rollout of %s on route %s: now %s at %s%%", new["model"], route, new["phase"], new["weight"])
            return
        if new["phase"] == "rolled_back":
            log.warning("rollout of %s on route %s ROLLED BACK: %s", new["model"], route, new["reason"])
        self._ended(route, new, spec)

    def _remember(self, route: str, state: dict[str, Any]) -> None:
        self.states[route] = state
        self.on_state(state)

    def _ended(self, route: str, state: dict[str, Any], spec: RouteSpec | None) -> None:
        self._remember(route, state)
        if spec is not None:
            self.view.set_route(route, spec)
        self.on_end(route, state["phase"])
        if state["phase"] != "rolled_back":
            log.info("rollout of %s on route %s %s: %s", state["model"], route, state["phase"], state["reason"])

    # -- the shadow comparison report ------------------------------------------------------------------------
    async def shadow_report(self, route: str) -> dict[str, Any]:
        """Per shadow model of the route (and any it had), counted across every gateway since counting began."""
        spec = await self.store.get_route(check_name("route", route))
        if spec is None:
            raise NotFound(f"route {route!r} is not registered")
        counts = await self.store.route_counts(route)
        recent = await self.store.disagreements(route)
        out = []
        for model in sorted({s.model for s in spec.shadows} | set(counts.shadows)):
            sc = counts.shadow(model)
            out.append(
                {
                    "model": model,
                    **{k: sc.n(k) for k in ("sent", "agree", "disagree", "failed", "dropped")},
                    "agreement": sc.agreement,
                    "latency_ms": {
                        "primary": {"p50": sc.primary.quantile_ms(0.5), "p99": sc.primary.quantile_ms(0.99)},
                        "shadow": {"p50": sc.shadow.quantile_ms(0.5), "p99": sc.shadow.quantile_ms(0.99)},
                    },
                    "recent_disagreements": [d for d in recent if d.get("model") == model],
                }
            )
        return {"route": route, "shadows": out}

    def summary(self, route: str) -> dict[str, Any]:
        s = self.states[route]
        return {k: s.get(k) for k in ("route", "model", "phase", "step", "weight", "reason", "updated_at")}
