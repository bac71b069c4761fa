"""After Redis lost data: the generation id, re-seeding records, adopting what backends hold (`placement.rebuild`)."""

from __future__ import annotations

import json
import secrets

from placement.records import BackendSpec, ModelSpec, RouteSpec
from placement.store.base import StoreBase, _s


class Rebuild(StoreBase):
    """Idempotent writes, so every gateway that noticed the loss may run them."""

    async def ensure_generation(self) -> str:
        """Write a new generation id unless one exists (the first gateway to notice wins); return the current."""
        self._count("admin")
        await self.r.set(f"{self.p}:generation", secrets.token_hex(8), nx=True)
        return await self.generation() or ""

    async def seed(self, kind: str, name: str, ver: int, spec: BackendSpec | ModelSpec | RouteSpec | None) -> str:
        """Re-seed one record (`spec` None: its tombstone) unless Redis has a newer version or a newer delete:
        'seeded', 'tomb' (a tombstone written) or 'kept'. Idempotent, so every gateway that noticed may run it."""
        self._count("admin")
        own = self.k_backend(name) if kind == "backend" else self.k_model(name) if kind == "model" else ""
        own = own or f"{self.p}:routes"
        cap_models, cap_bytes = 0, -1
        if isinstance(spec, BackendSpec):
            cap_models = spec.capacity.models
            cap_bytes = spec.capacity.memory_bytes if spec.capacity.memory_bytes is not None else -1
        keys = [self.k_tombstones, f"{self.p}:backends", f"{self.p}:models", f"{self.p}:routes"]
        res = await self._seed(
            keys=[*keys, f"{self.p}:routever", own],
            args=[kind, name, ver, json.dumps(spec.to_json()) if spec else "", cap_models, cap_bytes, self.events],
        )
        if kind == "model" and _s(res) != "kept":
            await self.r.incr(self.k_models_ver)  # after the write: the views' next resync reads the models
        return _s(res)

    async def adopt_held(self, bid: str, model: str, now: float) -> str:
        """Record a model the backend holds and Redis doesn't know as a ready copy: 'ok', 'exists', 'full',
        'unregistered' (not registered, or for another runtime) or 'gone' (no such backend)."""
        self._count("script")
        keys = [self.k_copies(bid), self.k_where(model), self.k_backend(bid), self.k_model(model), self.k_lru(bid)]
        res = await self._adopt_held(keys=[*keys, f"{self.p}:lastused"], args=[model, now, self.events, bid])
        return _s(res)
