"""Copies of models on backends: reserve a slot, adopt or commit a load, fail it, unload and remove a copy."""

from __future__ import annotations

from typing import Any

from placement.records import CopyRecord, CopyState
from placement.store.base import StoreBase, _copy_from_json, _s


class Copies(StoreBase):
    """Each state change of a copy is one script; capacity is only taken by `reserve`."""

    async def copies_of(self, name: str) -> list[CopyRecord]:
        """The copies of one model, straight from Redis (the cold path's source of truth)."""
        self._count("read")
        backends = [_s(b) for b in await self.r.smembers(self.k_where(name))]
        if not backends:
            return []
        async with self.r.pipeline(transaction=False) as pipe:
            for bid in backends:
                pipe.hget(self.k_copies(bid), name)
            raws = await pipe.execute()
        return [_copy_from_json(name, bid, raw) for bid, raw in zip(backends, raws, strict=True) if raw]

    async def copies_on(self, bid: str) -> list[CopyRecord]:
        self._count("read")
        data = await self.r.hgetall(self.k_copies(bid))
        return [_copy_from_json(_s(m), bid, raw) for m, raw in data.items()]

    async def lru_of(self, bid: str) -> dict[str, float]:
        """Last-used time of each copy on a backend (copies never used are absent)."""
        self._count("read")
        pairs: list[Any] = await self.r.zrange(self.k_lru(bid), 0, -1, withscores=True)
        return {_s(m): float(s) for m, s in pairs}

    async def copies_and_lru(self, bids: list[str]) -> dict[str, tuple[list[CopyRecord], dict[str, float]]]:
        """`copies_on` and `lru_of` of many backends in one round trip (the admin API's placement answer)."""
        if not bids:
            return {}
        self._count("read")
        async with self.r.pipeline(transaction=False) as pipe:
            for bid in bids:
                pipe.hgetall(self.k_copies(bid))
                pipe.zrange(self.k_lru(bid), 0, -1, withscores=True)
            raws = await pipe.execute()
        return {
            bid: (
                [_copy_from_json(_s(m), bid, raw) for m, raw in held.items()],
                {_s(m): float(t) for m, t in lru},
            )
            for bid, held, lru in zip(bids, raws[0::2], raws[1::2], strict=True)
        }

    async def reserve(self, bid: str, model: str, memory_bytes: int, token: int, now: float) -> str:
        self._count("script")
        res = await self._reserve(
            keys=[self.k_copies(bid), self.k_where(model), self.k_backend(bid)],
            args=[model, memory_bytes, token, now, self.events, bid],
        )
        return _s(res)

    async def adopt(self, bid: str, model: str, token: int) -> str:
        self._count("script")
        res = await self._adopt(keys=[self.k_copies(bid), self.k_lease(model)], args=[model, token])
        return _s(res)

    async def commit(self, bid: str, model: str, token: int, now: float, orphan: bool = False) -> str:
        """Mark a loading copy ready: 'ok', 'fenced' (the lease moved on) or 'lost' (the copy changed). With
        `orphan`, for a load whose gateway is gone: only while nobody holds the model's lease ('leased').
        The model's last use anywhere (p:lastused) is left to the usage flushes: a load is no request, and the
        learned gap between requests (`touch_many`) must not count one (it did: the first request after every
        demand load saw a gap of milliseconds, and a pre-warm a phantom request)."""
        self._count("script")
        res = await self._commit(
            keys=[
                self.k_copies(bid),
                self.k_lease(model),
                self.k_model(model),
                self.k_lru(bid),
            ],
            args=[model, token, now, self.events, bid, "orphan" if orphan else ""],
        )
        return _s(res)

    async def fail(
        self,
        bid: str,
        model: str,
        token: int,
        now: float,
        reason: str,
        backoff_base: float,
        backoff_max: float,
    ) -> str:
        """Mark a load failed; returns the backoff delay in seconds, or 'fenced'."""
        self._count("script")
        res = await self._fail(
            keys=[self.k_copies(bid), self.k_lease(model), self.k_model(model)],
            args=[model, token, now, reason[:2000], backoff_base, backoff_max, self.events, bid],
        )
        return _s(res)

    async def begin_unload(
        self, bid: str, model: str, now: float, expect: CopyState = CopyState.READY, token: int | None = None
    ) -> str:
        """Mark a copy unloading before its backend is asked to drop it; the slot stays taken until
        `remove_copy`. From `loading` (a load given up) pass the load's `token`: 'fenced' if it moved on."""
        self._count("script")
        res = await self._begin_unload(
            keys=[self.k_copies(bid)],
            args=[model, bid, self.events, now, expect.value, "" if token is None else token],
        )
        return _s(res)

    async def remove_copy(self, bid: str, model: str, expect: CopyState | None) -> str:
        """Delete a copy entry if it is in state `expect` (None: any state); frees its slot."""
        self._count("script")
        res = await self._remove(
            keys=[self.k_copies(bid), self.k_where(model), self.k_lru(bid)],
            args=[model, expect.value if expect else "*", self.events, bid],
        )
        return _s(res)
