"""The placement service one gateway runs: the local view and its sync, usage batching, the loader and
reconciliation, and one adapter per backend. The data plane and the admin API talk to this object only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from adapters.base import RuntimeAdapter
from placement.clock import Clock
from placement.errors import StoreUnavailable
from placement.eviction import EVICTIONS
from placement.loader import Loader
from placement.lookup import NameLookup
from placement.policy import CHOOSERS
from placement.reconcile import Reconciler
from placement.records import BackendSpec, CopyState, ModelSpec
from placement.redis_health import UNREACHABLE, RedisHealth
from placement.settings import PlacementSettings
from placement.store import RedisStore
from placement.tasks import sleep_or_stop, stop_task
from placement.usage import Usage
from placement.view import PlacementView, ViewSync

log = logging.getLogger("modelyard.placement")

AdapterFactory = Callable[[BackendSpec], RuntimeAdapter]


class Placer:
    def __init__(
        self, store: RedisStore, adapter_factory: AdapterFactory, settings: PlacementSettings, clock: Clock
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.view = PlacementView()
        self.health = RedisHealth(clock)
        self.sync = ViewSync(store, self.view, settings.resync_interval, self.health)
        self.lookup = NameLookup(store, self.view, self.health, clock)
        self.sync.on_name = self.lookup.forget
        self.usage = Usage(clock)
        self._factory = adapter_factory
        self._adapters: dict[str, tuple[BackendSpec, RuntimeAdapter]] = {}
        self.loader = Loader(
            store,
            self.view,
            self.usage,
            self.adapter,
            settings,
            clock,
            CHOOSERS[settings.backend_chooser](),
            EVICTIONS[settings.eviction_policy](clock),
        )
        self.reconciler = _Reconciler(self.health, store, self.view, self.loader, self.adapter, settings, clock)
        self.view.on_backends_changed = self._backends_changed
        self._flusher: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._rr = 0

    async def start(self) -> None:
        await self.sync.start()
        self._flusher = asyncio.create_task(self._flush_usage(), name="modelyard-usage-flush")
        await self.reconciler.start()

    async def stop(self) -> None:
        await self.reconciler.stop()
        await stop_task(self._flusher, self._stop)
        with contextlib.suppress(Exception):
            await self.store.touch_many(*self.usage.drain_all())
        await self.sync.stop()
        for _, adapter in self._adapters.values():
            with contextlib.suppress(Exception):
                await adapter.aclose()
        self._adapters.clear()

    # -- adapters --------------------------------------------------------------------------------------
    def adapter(self, backend: str) -> RuntimeAdapter:
        rec = self.view.backends.get(backend)
        have = self._adapters.get(backend)
        if have is not None and (rec is None or have[0] is rec.spec or have[0] == rec.spec):
            return have[1]
        if rec is None:
            raise KeyError(f"backend {backend!r} is not registered")
        adapter = self._factory(rec.spec)
        self._adapters[backend] = (rec.spec, adapter)
        if have is not None:
            self._close_later(have[1])
        return adapter

    def _backends_changed(self) -> None:
        for bid in list(self._adapters):
            rec = self.view.backends.get(bid)
            if rec is None or rec.spec != self._adapters[bid][0]:
                self._close_later(self._adapters.pop(bid)[1])

    def _close_later(self, adapter: RuntimeAdapter) -> None:
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(adapter.aclose())

    # -- the request path ------------------------------------------------------------------------------
    def model(self, name: str) -> ModelSpec | None:
        return self.view.models.get(name)

    def warm_backend(self, model: str, exclude: Iterable[str] = ()) -> str | None:
        """A backend holding a ready copy, from the local view only (no I/O). Fewest local requests first."""
        ready = self.view.ready_backends(model)
        if exclude:
            ready = [b for b in ready if b not in exclude]
        if not ready:
            return None
        if len(ready) == 1:
            return ready[0]
        self._rr += 1
        n = len(ready)
        rotated = ready[self._rr % n :] + ready[: self._rr % n]
        return min(rotated, key=lambda b: self.usage.inflight(model, b))

    async def ensure(self, model: str, timeout: float | None = None) -> str:
        """A backend with a ready copy (see `Loader.ensure`). Without Redis no copy can be placed: refused at
        once while Redis is known to be down, and the wait ends as soon as it is found down."""
        with self.health.guard():
            try:
                return await self.health.until_down(self.loader.ensure(model, timeout))
            except StoreUnavailable:
                # The shared load task goes on without this waiter; its outcome must not be left unretrieved
                # (asyncio would log it with a traceback).
                load = self.loader._tasks.get(model)
                if load is not None:
                    load.add_done_callback(_retrieve)
                raise

    async def copy_missing(self, model: str, backend: str) -> None:
        """The backend said it does not hold a copy the view called ready: fix Redis and the view."""
        self.view.set_copy(model, backend, None)
        with self.health.guard():
            await self._copy_missing(model, backend)

    async def _copy_missing(self, model: str, backend: str) -> None:
        for c in await self.store.copies_of(model):
            if c.backend == backend:
                if c.state is CopyState.READY:
                    # Ready in Redis but gone from the backend: it restarted or lost it. Free the slot.
                    holding = await self.adapter(backend).loaded()
                    if model not in holding:
                        await self.store.remove_copy(backend, model, CopyState.READY)
                        log.warning("%s lost model %s; its copy was removed", backend, model)
                        continue
                self.view.set_copy(model, backend, c.state)

    async def _flush_usage(self) -> None:
        while not await sleep_or_stop(self._stop, self.settings.usage_flush_interval):
            if not self.health.up:
                continue  # usage keeps accumulating in memory (one entry per copy) and is written once it is back
            try:
                await self.store.touch_many(*self.usage.drain_all())
            except asyncio.CancelledError:
                raise
            except UNREACHABLE as exc:
                self.health.mark_down(f"{type(exc).__name__}: {exc}")  # said once, by the health's log line
            except Exception as exc:
                log.warning("could not record last-used times: %s", exc)


def _retrieve(task: asyncio.Task[str]) -> None:
    if not task.cancelled():
        task.exception()


class _Reconciler(Reconciler):
    """Reconciliation needs Redis: its rounds are skipped while Redis is down (the gateway's one log line says
    so) rather than failing with a traceback each time; a round that meets the outage ends quietly."""

    def __init__(self, health: RedisHealth, *args: Any) -> None:
        super().__init__(*args)
        self._health = health

    async def reconcile_if_leader(self) -> None:
        if not self._health.up:
            return
        try:
            await super().reconcile_if_leader()
        except UNREACHABLE as exc:
            self._health.mark_down(f"{type(exc).__name__}: {exc}")
        except StoreUnavailable:
            pass  # Redis was marked down meanwhile; its one log line says so
