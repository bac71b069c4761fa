"""What a list-configured backend (TF Serving) should serve, and the right to tell it so.

TF Serving has no load or unload call: `HandleReloadConfigRequest` replaces its whole model list, and a model
left out is unloaded. So the list a gateway sends must be complete and current, and two gateways must never
send theirs at once. Both come from Redis here:

- the wanted list of a backend is derived from its copies, not kept beside them: every copy in `loading` or
  `ready` state (a slot taken and not being given back). A copy marked `unloading` is out of the list, which is
  how an unload happens; reconciliation removing a copy the backend lost takes it out as well. One source of
  truth, so the list can't drift from the capacity accounting;
- `hold(backend)` is a lease in Redis with a fencing token, renewed while held, so sending lists to one
  backend is serialized across all gateways; the list last sent is recorded under that token, so a gateway
  whose lease ran out can't record a stale list, and an unchanged list is not sent again.

The TF Serving adapter (`adapters.tfserving`) uses this through its `ModelLists` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from placement.records import CopyState
from placement.store import RedisStore
from placement.tasks import sleep_or_stop, stop_task
from placement.view import PlacementView

log = logging.getLogger("modelyard.placement")

_WANTED = (CopyState.LOADING, CopyState.READY)


class ServedLists:
    def __init__(self, store: RedisStore, view: PlacementView, lease_ttl: float, poll: float = 0.05) -> None:
        self.store = store
        self.view = view
        self.lease_ttl = lease_ttl
        self.poll = poll

    async def wanted(self, backend_id: str) -> list[tuple[str, str | None]]:
        """(model, source) of every copy the backend should serve now, by name."""
        out = []
        for c in await self.store.copies_on(backend_id):
            if c.state in _WANTED:
                spec = self.view.models.get(c.model)
                if spec is None:
                    spec = await self.store.get_model_spec(c.model)
                out.append((c.model, spec.source if spec is not None else None))
        return sorted(out)

    @contextlib.asynccontextmanager
    async def hold(self, backend_id: str, timeout: float) -> AsyncIterator[int]:
        """The exclusive right to send `backend_id` its list, for as long as the body runs; yields the fencing
        token. Waits up to `timeout` seconds for another holder, then raises TimeoutError."""
        ttl_ms = int(self.lease_ttl * 1000)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            token = await self.store.served_lock_try(backend_id, ttl_ms)
            if token is not None:
                break
            if asyncio.get_running_loop().time() >= deadline:
                raise TimeoutError(f"another gateway kept the model list of {backend_id} for over {timeout:g} s")
            await asyncio.sleep(self.poll)
        stop = asyncio.Event()
        renew = asyncio.create_task(self._renew(backend_id, token, stop), name=f"modelyard-served-{backend_id}")
        try:
            yield token
        finally:
            await stop_task(renew, stop)
            with contextlib.suppress(Exception):
                await self.store.served_lock_release(backend_id, token)

    async def _renew(self, backend_id: str, token: int, stop: asyncio.Event) -> None:
        ttl_ms = int(self.lease_ttl * 1000)
        while not await sleep_or_stop(stop, self.lease_ttl / 3):
            if not await self.store.served_lock_renew(backend_id, token, ttl_ms):
                log.warning("lost the model-list lease of %s (token %d)", backend_id, token)
                return

    async def sent(self, backend_id: str) -> str | None:
        return await self.store.served_sent(backend_id)

    async def record_sent(self, backend_id: str, token: int, value: str) -> bool:
        return await self.store.served_sent_set(backend_id, token, value)
