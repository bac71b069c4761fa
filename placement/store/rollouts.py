"""Rollout state and route statistics (`placement.rollout`, `placement.route_stats`)."""

from __future__ import annotations

import json
from typing import Any

from placement.records import RouteSpec
from placement.route_stats import DISAGREEMENTS_KEPT, Batch, ModelCounts, RouteCounts, ShadowCounts
from placement.store.base import StoreBase, _s


class Rollouts(StoreBase):
    """Per-route sums of every gateway's flushes, the latest disagreements, and versioned rollout records."""

    async def flush_route_stats(self, batch: Batch) -> None:
        """Add one gateway's counts since its last flush to the cluster's sums, in one round trip."""
        if not batch:
            return
        self._count("route_stats_flush")
        async with self.r.pipeline(transaction=False) as pipe:
            for route, rc in batch.routes.items():
                key = self.k_rstat(route)
                for m, c in rc.models.items():
                    pipe.hincrby(key, f"m|{m}|req", c.requests)
                    if c.errors:
                        pipe.hincrby(key, f"m|{m}|err", c.errors)
                    for b, n in c.latency.counts.items():
                        pipe.hincrby(key, f"m|{m}|b{b}", n)
                for m, sc in rc.shadows.items():
                    for outcome, n in sc.counts.items():
                        pipe.hincrby(key, f"s|{m}|{outcome}", n)
                    for b, n in sc.primary.counts.items():
                        pipe.hincrby(key, f"s|{m}|p{b}", n)
                    for b, n in sc.shadow.counts.items():
                        pipe.hincrby(key, f"s|{m}|s{b}", n)
            for d in batch.disagreements:
                pipe.lpush(f"{self.p}:rdis:{d.route}", json.dumps(d.to_json()))
            for route in {d.route for d in batch.disagreements}:
                pipe.ltrim(f"{self.p}:rdis:{route}", 0, DISAGREEMENTS_KEPT - 1)
            await pipe.execute()

    async def route_counts(self, route: str) -> RouteCounts:
        """The cluster's sums for one route since its counts began."""
        self._count("read")
        raw = await self.r.hgetall(self.k_rstat(route))
        out = RouteCounts()
        for k, v in raw.items():
            kind, model, field_ = _s(k).split("|", 2)
            n = int(v)
            if kind == "m":
                c = out.models.setdefault(model, ModelCounts())
                if field_ == "req":
                    c.requests = n
                elif field_ == "err":
                    c.errors = n
                else:
                    c.latency.counts[int(field_[1:])] = n
            else:
                sc = out.shadows.setdefault(model, ShadowCounts())
                if field_[0] in "ps" and field_[1:].isdigit():
                    (sc.primary if field_[0] == "p" else sc.shadow).counts[int(field_[1:])] = n
                else:
                    sc.counts[field_] = n
        return out

    async def disagreements(self, route: str) -> list[dict[str, Any]]:
        self._count("read")
        raw = await self.r.lrange(f"{self.p}:rdis:{route}", 0, DISAGREEMENTS_KEPT - 1)
        return [json.loads(x) for x in raw]

    async def rollout_get(self, route: str) -> dict[str, Any] | None:
        self._count("read")
        raw = await self.r.get(self.k_rollout(route))
        return json.loads(raw) if raw else None

    async def rollout_routes(self) -> list[str]:
        self._count("read")
        return sorted(_s(r) for r in await self.r.smembers(f"{self.p}:rollouts"))

    async def rollout_write(
        self, route: str, expect_version: int | None, state: dict[str, Any], spec: RouteSpec | None
    ) -> str:
        """Write a rollout's state, and the route it sets (if any), together: 'ok', 'conflict' (someone wrote
        since `expect_version` was read), 'running' (starting while another rollout runs) or 'gone' (the route was
        deleted: it is never brought back)."""
        self._count("script")
        res = await self._rollout_write(
            keys=[self.k_rollout(route), f"{self.p}:routes", f"{self.p}:rollouts"],
            args=[
                "" if expect_version is None else str(expect_version),
                json.dumps(state),
                route,
                json.dumps(spec.to_json()) if spec is not None else "",
                self.events,
            ],
        )
        return _s(res)
