"""Registration and administration of backends and models: what the admin API does, without HTTP.

Writes go to Redis and are applied to this gateway's view at once (read-your-writes); other gateways learn
them from the events. Routes are `placement.routes`; they hook in through `name_taken` and `model_used`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from adapters.base import LoadRequest
from adapters.errors import BackendError
from placement.errors import Conflict, InvalidSpec, NotFound, Unplaceable
from placement.placer import Placer
from placement.records import BackendSpec, CopyRecord, CopyState, ModelSpec, ModelStatus, check_name
from placement.store import version


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


log = logging.getLogger("modelyard.admin")

MAX_PAGE = 1000


class Registry:
    def __init__(self, placer: Placer) -> None:
        self.placer = placer
        self.store = placer.store
        self.view = placer.view
        # Other registries (routes) say here which names they own, so a model can't take a route's name.
        self.name_taken: list[Callable[[str], Awaitable[bool]]] = []
        # ... and which of them use a model, so it can't be deleted from under them.
        self.model_used: list[Callable[[str], Awaitable[list[str]]]] = []

    # -- backends --------------------------------------------------------------------------------------
    async def put_backend(self, backend_id: str, body: Any) -> dict[str, Any]:
        spec = BackendSpec.parse(backend_id, body)
        old = await self.store.get_backend(backend_id)
        if old is not None and old.spec.kind != spec.kind:
            if any(c.state.holds_slot for c in await self.store.copies_on(backend_id)):
                raise Conflict(
                    f"backend {backend_id!r} is a {old.spec.kind} backend with models loaded; "
                    "DELETE it (which drains it) before registering it as " + spec.kind
                )
        await self.store.put_backend(spec)
        self.view.set_backend(backend_id, await self.store.get_backend(backend_id))
        self.view.versions[f"backend:{backend_id}"] = version()
        await self.placer.reconciler.check_health()
        log.info(
            "backend %s registered: %s %s, capacity %s",
            backend_id,
            spec.kind,
            spec.url,
            spec.capacity,
            extra={"event": "admin", "action": "put_backend", "backend": backend_id, "spec": spec.to_json()},
        )
        return await self.backend_json(backend_id)

    async def backend_json(self, backend_id: str) -> dict[str, Any]:
        rec = await self.store.get_backend(check_name("backend", backend_id))
        if rec is None:
            raise NotFound(f"backend {backend_id!r} is not registered")
        copies = [c for c in await self.store.copies_on(backend_id) if c.state.holds_slot]
        out = rec.spec.to_json()
        out["healthy"] = self.view.reachable.get(backend_id, rec.healthy)
        out["draining"] = rec.draining
        out["used"] = {"models": len(copies), "memory_bytes": sum(c.memory_bytes for c in copies)}
        out["models"] = sorted(c.model for c in copies if c.state is CopyState.READY)
        return out

    async def list_backends(self) -> list[dict[str, Any]]:
        return [await self.backend_json(b) for b in sorted(self.view.backends)]

    async def delete_backend(self, backend_id: str) -> dict[str, Any]:
        """Drain: nothing new goes there, its copies are unloaded (loads under way finish first), then forget it."""
        if not await self.store.set_backend_flag(check_name("backend", backend_id), "draining", True):
            raise NotFound(f"backend {backend_id!r} is not registered")
        self.view.set_backend(backend_id, await self.store.get_backend(backend_id))
        unloaded, left = await self._unload_all(
            lambda: self.store.copies_on(backend_id),
            "drain",
            give_up=lambda: self.view.reachable.get(backend_id) is False,
        )
        if left:
            log.warning(
                "backend %s removed with copies it could not drain: %s",
                backend_id,
                [c.model for c in left],
                extra={"event": "admin_error", "action": "delete_backend", "backend": backend_id},
            )
        for c in await self.store.copies_on(backend_id):  # failed entries, and what an unreachable backend held
            await self.store.remove_copy(backend_id, c.model, None)
        await self.store.delete_backend(backend_id)
        self.view.set_backend(backend_id, None)
        self.view.tombstones[f"backend:{backend_id}"] = version()  # re-seeded if Redis loses data (rebuild)
        log.info(
            "backend %s drained (%d models unloaded) and removed",
            backend_id,
            len(unloaded),
            extra={"event": "admin", "action": "delete_backend", "backend": backend_id},
        )
        return {
            "id": backend_id,
            "drained": True,
            "unloaded": sorted(c.model for c in unloaded),
            "abandoned": sorted(c.model for c in left),
        }

    # -- models ----------------------------------------------------------------------------------------
    async def put_model(self, name: str, body: Any) -> dict[str, Any]:
        spec = ModelSpec.parse(name, body)
        await self._check_model(spec)
        await self._unload_if_changed(spec)
        await self.store.put_model(spec)
        self._registered(spec)
        return await self.model_json(name)

    async def put_models(self, body: Any) -> dict[str, Any]:
        """`PUT /admin/models`: register or update many models. Every entry is checked before any is written;
        the specs are then written in one Redis transaction. Returns {"models": [stored records]}."""
        if not isinstance(body, dict) or set(body) != {"models"} or not isinstance(body["models"], list):
            raise InvalidSpec('the body must be {"models": [{"name": ..., "runtime": ...}, ...]}')
        specs: list[ModelSpec] = []
        for i, entry in enumerate(body["models"]):
            name = entry.get("name") if isinstance(entry, dict) else None
            where = f"models[{i}]" + (f" ({name})" if isinstance(name, str) else "")
            try:
                if not isinstance(name, str):
                    raise InvalidSpec("name is required: a string")
                spec = ModelSpec.parse(name, entry)
                await self._check_model(spec)
            except (InvalidSpec, Conflict, Unplaceable) as exc:
                raise type(exc)(f"{where}: {exc}") from None
            specs.append(spec)
        names = [s.name for s in specs]
        twice = sorted(n for n, k in Counter(names).items() if k > 1)  # not names.count: O(n^2) at 10,000
        if twice:
            raise InvalidSpec(f"model name(s) {twice} appear more than once; name each model once")
        old = await self.store.model_specs(names)  # one round trip per 500, not one per model
        for spec in specs:
            await self._unload_if_differs(spec, old[spec.name])
        await self.store.put_models(specs)
        for spec in specs:
            self._registered(spec)
        statuses = await self.store.model_statuses(names)
        return {"models": [statuses[n].to_json() for n in names if n in statuses]}

    async def _check_model(self, spec: ModelSpec) -> None:
        """Refuse a model that takes a route's name or that fits no backend of its runtime."""
        name = spec.name
        for taken in self.name_taken:
            if await taken(name):
                raise Conflict(f"{name!r} is already the name of a route; a model can't have the same name")
        same_kind = [r for r in self.view.backends.values() if r.spec.kind == spec.runtime]
        if (
            spec.memory_bytes
            and same_kind
            and not any(
                r.spec.capacity.memory_bytes is None or r.spec.capacity.memory_bytes >= spec.memory_bytes
                for r in same_kind
            )
        ):
            biggest = max(r.spec.capacity.memory_bytes or 0 for r in same_kind)
            raise Unplaceable(
                f"model {name!r} needs {spec.memory_bytes} bytes but the largest {spec.runtime} backend holds "
                f"{biggest}; lower memory_bytes or register a larger backend"
            )

    async def _unload_if_changed(self, spec: ModelSpec) -> None:
        await self._unload_if_differs(spec, await self.store.get_model_spec(spec.name))

    async def _unload_if_differs(self, spec: ModelSpec, old: ModelSpec | None) -> None:
        if old is not None and (
            old.runtime != spec.runtime or old.source != spec.source or old.memory_bytes != spec.memory_bytes
        ):
            # What is loaded no longer matches the registration: unload it; the next request loads it anew.
            await self.unload_model(spec.name)

    def _registered(self, spec: ModelSpec) -> None:
        self.view.set_model(spec.name, spec)
        self.view.versions[f"model:{spec.name}"] = version()
        log.info(
            "model %s registered: %s",
            spec.name,
            spec.to_json(),
            extra={"event": "admin", "action": "put_model", "model": spec.name, "spec": spec.to_json()},
        )

    async def status(self, name: str) -> ModelStatus:
        status = await self.store.model_status(check_name("model", name))
        if status is None:
            raise NotFound(f"model {name!r} is not registered")
        return status

    async def model_json(self, name: str) -> dict[str, Any]:
        return (await self.status(name)).to_json()

    async def list_models(self, limit: int, cursor: str | None) -> dict[str, Any]:
        if limit < 1 or limit > MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
        names = await self.store.list_model_names(limit + 1, cursor)
        page, more = names[:limit], len(names) > limit
        statuses = await self.store.model_statuses(page)  # two round trips for the page, not three per model
        models = [st.to_json() for st in statuses.values()]
        return {"models": models, "next_cursor": page[-1] if more and page else None}

    async def delete_model(self, name: str) -> dict[str, Any]:
        await self.status(name)
        for used in self.model_used:
            users = await used(name)
            if users:
                raise Conflict(f"model {name!r} is named by route(s) {users}; change or delete them before the model")
        unloaded = await self.unload_model(name)
        for c in await self.store.copies_of(name):  # failed entries and anything left
            await self.store.remove_copy(c.backend, name, None)
        await self.store.delete_model(name)
        self.view.set_model(name, None)
        self.view.tombstones[f"model:{name}"] = version()  # re-seeded if Redis loses data (rebuild)
        log.info("model %s deleted", name, extra={"event": "admin", "action": "delete_model", "model": name})
        return {"name": name, "deleted": True, "unloaded_from": unloaded}

    async def load_model(self, name: str) -> dict[str, Any]:
        spec = (await self.status(name)).spec
        await self.placer.ensure(name)
        if spec.min_copies > 1:
            await self.placer.loader.ensure_copies(name, spec.min_copies)
        return await self.model_json(name)

    async def refresh_model(self, name: str) -> dict[str, Any]:
        """Pick up a changed source: each ready copy is loaded again in place. Triton swaps a model whose files
        changed without a moment where it is missing (old requests finish on the old version); unchanged files
        make this a no-op."""
        spec = (await self.status(name)).spec
        refreshed: list[str] = []
        failed: dict[str, str] = {}
        for c in await self.store.copies_of(name):
            if c.state is not CopyState.READY:
                continue
            try:
                await self.placer.adapter(c.backend).load(LoadRequest(name, spec.source))
                refreshed.append(c.backend)
            except BackendError as exc:
                failed[c.backend] = str(exc)
                log.warning(
                    "refresh of %s on %s failed: %s",
                    name,
                    c.backend,
                    exc,
                    extra={"event": "admin_error", "action": "refresh_model", "model": name, "backend": c.backend},
                )
        log.info(
            "model %s refreshed on %s",
            name,
            refreshed,
            extra={"event": "admin", "action": "refresh_model", "model": name, "backends": refreshed},
        )
        return {**await self.model_json(name), "refreshed_on": refreshed, "refresh_failed": failed}

    async def unload_model(self, name: str) -> list[str]:
        """Unload every copy; waits for loads under way to end first. Returns the backends unloaded from."""
        unloaded, _ = await self._unload_all(lambda: self.store.copies_of(name), "admin")
        return [c.backend for c in unloaded]

    async def _unload_all(
        self,
        list_copies: Callable[[], Awaitable[list[CopyRecord]]],
        reason: str,
        give_up: Callable[[], bool] = lambda: False,
    ) -> tuple[list[CopyRecord], list[CopyRecord]]:
        """Unload every ready copy `list_copies` gives, waiting for loads and unloads under way to end, until
        none holds a slot, the load timeout passes or `give_up()`. Returns (unloaded, left)."""
        unloaded: list[CopyRecord] = []
        deadline = _loop_time() + self.placer.settings.load_timeout
        while True:
            for c in await list_copies():
                if c.state is CopyState.READY and await self.placer.loader.unload_copy(c.model, c.backend, reason):
                    unloaded.append(c)
            left = [c for c in await list_copies() if c.state.holds_slot]
            if not left or _loop_time() > deadline or give_up():
                return unloaded, left
            await asyncio.sleep(0.1)

    # -- placement view --------------------------------------------------------------------------------
    async def placement(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        backends = sorted(self.view.backends.items())  # before the read: one may come or go while it runs
        held = await self.store.copies_and_lru([bid for bid, _ in backends])  # one round trip for all of them
        for bid, rec in backends:
            copies, lru = held[bid]
            scores = await self.placer.loader.policy_scores(copies)
            models = [{"name": c.model, "state": c.state.value, "last_used": lru.get(c.model)} for c in copies]
            for m in models:  # the eviction policy's score: higher is kept longer (ready copies only)
                m["score"] = scores.get((str(m["name"]), bid))
            models.sort(key=lambda m: -float(m["last_used"] or 0))
            out[bid] = {
                "kind": rec.spec.kind,
                "healthy": self.view.reachable.get(bid, rec.healthy),
                "draining": rec.draining,
                "capacity": rec.spec.capacity.to_json(),
                "used": {
                    "models": sum(1 for c in copies if c.state.holds_slot),
                    "memory_bytes": sum(c.memory_bytes for c in copies if c.state.holds_slot),
                },
                "models": models,
            }
        return {"backends": out, "eviction": self.placer.loader.eviction.name}
