"""Usage in batches: last-used times, request counts, learned gaps between requests and load seconds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from placement.arrivals import WEIGHT
from placement.store.base import StoreBase, _s


class Usage(StoreBase):
    """Written off the warm path (one round trip per flush); read by eviction and scaling."""

    async def touch_many(
        self, used: Iterable[tuple[str, str, float]], requests: Mapping[str, int], finished: Mapping[str, float]
    ) -> None:
        """One flush of `Usage.drain_all`, in one round trip: each copy's last use, (model, backend, when), which
        eviction reads; requests served per model; each model's last finished request, the only thing that moves
        the model's last use anywhere and teaches its gap between requests (a copy kept recent by a request in
        flight across a flush is no new request). Never moves a time back."""
        items = list(used)
        if not items and not requests:
            return
        self._count("usage_flush")
        async with self.r.pipeline(transaction=False) as pipe:
            # Before last uses move: each model's gap between requests, from the previous last use anywhere.
            seen = [(m, finished[m], n) for m, n in requests.items() if n > 0 and m in finished]
            if seen:
                args: list[Any] = [WEIGHT]
                for m, when, n in seen:
                    args += [m, when, n]
                await self._gaps(keys=[f"{self.p}:lastused", f"{self.p}:gaps"], args=args, client=pipe)
            for model, bid, when in items:
                pipe.zadd(self.k_lru(bid), {model: when}, gt=True, xx=True)
            for model, when in finished.items():
                pipe.zadd(f"{self.p}:lastused", {model: when}, gt=True)
            for model, n in requests.items():
                pipe.hincrby(f"{self.p}:requests", model, n)
            await pipe.execute()

    async def note_load_seconds(self, model: str, seconds: float) -> None:
        """Learn how long one load of `model` takes (a moving average over its loads; cold path only)."""
        self._count("script")
        await self._load_seconds(keys=[f"{self.p}:loadsec"], args=[model, seconds])

    async def eviction_facts(self, models: Iterable[str]) -> dict[str, tuple[int, float, float]]:
        """(requests since registration, learned load seconds, learned mean gap between requests) of each model,
        in one round trip; zeros when nothing is known. What eviction policies weigh besides last use."""
        names = list(dict.fromkeys(models))
        if not names:
            return {}
        self._count("read")
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hmget(f"{self.p}:requests", names)
            pipe.hmget(f"{self.p}:loadsec", names)
            pipe.hmget(f"{self.p}:gaps", names)
            counts, secs, gaps = await pipe.execute()
        return {
            m: (int(n) if n is not None else 0, float(s) if s is not None else 0.0, float(g) if g else 0.0)
            for m, n, s, g in zip(names, counts, secs, gaps, strict=True)
        }

    async def last_requests(self, models: Iterable[str]) -> dict[str, float]:
        """Each model's last use on any gateway (`p:lastused`, kept across evictions; 0 when never), in one round
        trip: `EvictionCandidate.last_request`, which tells a pre-warmed copy (loaded after it) from the rest."""
        names = list(dict.fromkeys(models))
        if not names:
            return {}
        self._count("read")
        scores = await self.r.zmscore(f"{self.p}:lastused", names)
        return {m: float(t) if t is not None else 0.0 for m, t in zip(names, scores, strict=True)}

    async def prewarm_facts(self) -> dict[str, tuple[float, float, float]]:
        """(last used anywhere, learned mean gap, learned load seconds) of every model with a learned gap, in one
        round trip: what the pre-warm leader reads each tick (`placement.prewarm_task`; never the warm path)."""
        self._count("read")
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(f"{self.p}:gaps")
            pipe.zrange(f"{self.p}:lastused", 0, -1, withscores=True)
            pipe.hgetall(f"{self.p}:loadsec")
            gaps, used, secs = await pipe.execute()
        last = {_s(m): float(t) for m, t in used}
        loadsec = {_s(m): float(v) for m, v in secs.items()}
        return {
            _s(m): (last.get(_s(m), 0.0), float(g), loadsec.get(_s(m), 0.0)) for m, g in gaps.items() if float(g) > 0
        }

    async def request_counts(self) -> dict[str, int]:
        """Requests served per model since it was registered, summed over every gateway's flushes."""
        self._count("read")
        raw = await self.r.hgetall(f"{self.p}:requests")
        return {_s(m): int(n) for m, n in raw.items()}
