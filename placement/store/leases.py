"""Fenced locks: the load lease of a model, and the lock on sending a TF Serving backend its model list."""

from __future__ import annotations

from placement.store.base import StoreBase, _s


class Leases(StoreBase):
    """Both take a fencing token from `p:fence`; only the token's holder renews, releases or writes under it."""

    async def lease_try(self, model: str, ttl_ms: int) -> int | None:
        """Take the load lease of a model; returns its fencing token, or None when someone holds it."""
        self._count("lease")
        token = int(await self.r.incr(f"{self.p}:fence"))
        ok = await self.r.set(self.k_lease(model), token, nx=True, px=ttl_ms)
        return token if ok else None

    async def lease_renew(self, model: str, token: int, ttl_ms: int) -> bool:
        self._count("lease")
        return bool(await self._renew(keys=[self.k_lease(model)], args=[token, ttl_ms]))

    async def lease_release(self, model: str, token: int) -> None:
        self._count("lease")
        await self._release(keys=[self.k_lease(model)], args=[token, self.events, model])

    async def lease_holder(self, model: str) -> int | None:
        self._count("lease")
        raw = await self.r.get(self.k_lease(model))
        return int(raw) if raw else None

    # -- model lists of list-configured backends (TF Serving) ----------------------------------------------
    async def served_lock_try(self, bid: str, ttl_ms: int) -> int | None:
        """Take the right to send backend `bid` its model list; its fencing token, or None when it is held."""
        self._count("served")
        token = int(await self.r.incr(f"{self.p}:fence"))
        ok = await self.r.set(self.k_served(bid, "lock"), token, nx=True, px=ttl_ms)
        return token if ok else None

    async def served_lock_renew(self, bid: str, token: int, ttl_ms: int) -> bool:
        self._count("served")
        return bool(await self._renew(keys=[self.k_served(bid, "lock")], args=[token, ttl_ms]))

    async def served_lock_release(self, bid: str, token: int) -> None:
        self._count("served")
        await self._lock_release(keys=[self.k_served(bid, "lock")], args=[token])

    async def served_sent(self, bid: str) -> str | None:
        self._count("served")
        raw = await self.r.get(self.k_served(bid, "sent"))
        return _s(raw) if raw is not None else None

    async def served_sent_set(self, bid: str, token: int, value: str) -> bool:
        """Record the list sent to `bid`; refused (False) unless `token` still holds the backend's lock."""
        self._count("served")
        keys = [self.k_served(bid, "lock"), self.k_served(bid, "sent")]
        return bool(await self._sent_set(keys=keys, args=[token, value]))
