"""Keeping Redis equal to what the backends really hold, and the view's health current.

Each gateway checks its backends' health (local view only: a backend this gateway cannot reach gets no
requests from it) and writes a change of health to Redis for the admin API. One gateway at a time, holding
the reconcile lease, compares each healthy backend's real contents with its copies in Redis:

- a copy Redis calls ready or unloading that the backend does not hold is removed (the backend restarted or
  an unload finished without its bookkeeping);
- a loading copy with no load lease behind it for longer than the load timeout is unloaded and removed;
- a copy stuck in unloading is unloaded again;
- models the backend holds and Redis doesn't know are adopted when registered and within capacity, else
  unloaded (`placement.rebuild.Rebuilder.adopt_backend`): a backend back from a partition, or Redis back empty;
- a backend the leader's own health checks have found dead (`health_failures` in a row) *and* whose `healthy`
  flag in Redis says so (the last gateway that changed its mind about it agreed) loses its copies: they leave the
  placement and free their slots, so its models are placed elsewhere on their next request. One gateway that
  can't reach a backend others reach only stops sending it requests; it never removes copies on its own word.
  When the backend answers again, the step above reconciles it with what it really holds (a restarted Triton
  holds nothing; a partitioned one keeps what it had, adopted back while it fits);
- models with `min_copies` get their missing copies loaded;
- models with `max_copies` above 1 get copies added or removed as their request rate says (`placement.scaling`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from adapters.base import RuntimeAdapter
from adapters.errors import BackendError
from placement.clock import Clock
from placement.errors import PlacementError
from placement.loader import Loader
from placement.rebuild import Rebuilder
from placement.records import CopyState
from placement.scaling import CopyScaler
from placement.settings import PlacementSettings
from placement.store import RedisStore
from placement.tasks import sleep_or_stop, stop_task
from placement.view import PlacementView

log = logging.getLogger("modelyard.reconcile")


class Reconciler:
    def __init__(
        self,
        store: RedisStore,
        view: PlacementView,
        loader: Loader,
        adapters: Callable[[str], RuntimeAdapter],
        settings: PlacementSettings,
        clock: Clock,
    ) -> None:
        self.store = store
        self.view = view
        self.loader = loader
        self.adapter = adapters
        self.settings = settings
        self.clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._failures: dict[str, int] = {}  # consecutive failed health checks per backend
        self._stop = asyncio.Event()
        self.scaler = CopyScaler(store, view, loader, settings, clock)
        self.rebuilder = Rebuilder(store, view, adapters, clock)
        view.on_generation_lost = self._generation_lost
        self._lease: int | None = None  # the reconcile lease's token when this gateway took it last
        self._verdicts: dict[str, bool] = {}  # the health checks' last verdict per backend
        self.dead_dropped = 0  # copies removed from dead backends, for metrics and tests

    def _generation_lost(self) -> None:
        self.rebuilder.trigger()

    async def start(self) -> None:
        await self.check_health()
        self._tasks = [
            asyncio.create_task(self._every(self.settings.health_interval, self.check_health)),
            asyncio.create_task(self._every(self.settings.reconcile_interval, self.reconcile_if_leader)),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            await stop_task(t, self._stop)
        if self._lease is not None:  # hand leadership on at once rather than after the lease expires
            with contextlib.suppress(Exception):
                await self.store.lease_release("__reconcile__", self._lease)
        task = self.rebuilder._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _every(self, interval: float, fn: Callable[[], object]) -> None:
        while not await sleep_or_stop(self._stop, interval):
            try:
                result = fn()
                if asyncio.iscoroutine(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("periodic %s failed", getattr(fn, "__name__", fn))

    async def check_health(self) -> None:
        """One liveness check of every backend. A backend seen for the first time takes the check's answer;
        after that it is marked unreachable only after `health_failures` checks in a row fail (a busy server
        can miss one), and reachable again at the first success."""
        with contextlib.suppress(Exception):  # Redis unreachable: ViewSync reports it; nothing to rebuild yet
            await self.rebuilder.check()
        bids = list(self.view.backends)
        results = await asyncio.gather(*(self.adapter(b).healthy() for b in bids), return_exceptions=True)
        for bid, ok in zip(bids, results, strict=True):
            before = self.view.reachable.get(bid)
            if ok is True:
                self._failures.pop(bid, None)
                healthy = True
            else:
                failures = self._failures[bid] = self._failures.get(bid, 0) + 1
                healthy = before is True and failures < self.settings.health_failures
            self.view.reachable[bid] = healthy
            rec = self.view.backends.get(bid)
            if before is not None and before != healthy:
                log.warning("backend %s is now %s", bid, "healthy" if healthy else "UNHEALTHY")
            if rec is not None and rec.healthy != healthy:
                with contextlib.suppress(Exception):
                    await self.store.set_backend_flag(bid, "healthy", healthy)
            was, self._verdicts[bid] = self._verdicts.get(bid), healthy
            # Its own verdict, not `before`: the data plane takes a refusing backend out of the view at once.
            if was is True and not healthy and await self._leading():
                # The leader's word, said now rather than at its next round: the copies leave the placement.
                with contextlib.suppress(Exception):
                    await self.drop_dead(bid)

    async def reconcile_if_leader(self) -> None:
        # The leader keeps the lease by renewing it each round (it lasts two rounds), so leadership is stable and
        # there is always a leader to act at once on a dead backend; a dead leader's lease expires in two rounds.
        ttl = int(self.settings.reconcile_interval * 2000)
        if self._lease is None or not await self.store.lease_renew("__reconcile__", self._lease, ttl):
            self._lease = await self.store.lease_try("__reconcile__", ttl)
            if self._lease is None:
                return
        await self.reconcile()

    async def _leading(self) -> bool:
        """True while this gateway holds the reconcile lease."""
        try:
            return self._lease is not None and await self.store.lease_holder("__reconcile__") == self._lease
        except Exception:
            return False

    async def reconcile(self) -> None:
        for bid in list(self.view.backends):
            if self.view.reachable.get(bid) is False:
                rec = self.view.backends.get(bid)
                if rec is not None and not rec.healthy:
                    await self.drop_dead(bid)
                continue
            try:
                await self.reconcile_backend(bid)
            except (BackendError, PlacementError) as exc:
                log.warning("reconciling %s: %s", bid, exc)
        await self.ensure_min_copies()
        await self.scaler.run()

    async def reconcile_backend(self, bid: str) -> None:
        adapter = self.adapter(bid)
        # Redis first, then the backend: a copy committed ready before the listing must appear in it.
        copies = await self.store.copies_on(bid)
        holding = await adapter.loaded()
        now = self.clock.now()
        for c in copies:
            age = now - c.since
            if c.state is CopyState.READY and c.model not in holding:
                if await self.store.remove_copy(bid, c.model, CopyState.READY) == "ok":
                    log.warning("%s no longer holds %s (restarted?): its copy was removed", bid, c.model)
            elif c.state is CopyState.UNLOADING and age > self.settings.stuck_after:
                # The gateway that began this unload did not finish it (it died, or the backend failed).
                await adapter.unload(c.model)
                if await self.store.remove_copy(bid, c.model, CopyState.UNLOADING) == "ok":
                    log.warning("finished an unload of %s on %s left for %.0f s", c.model, bid, age)
            elif (
                c.state is CopyState.LOADING
                and c.model in holding
                and await self.store.lease_holder(c.model) is None
                and await self.store.commit(bid, c.model, c.token, now, orphan=True) == "ok"
            ):
                # Its gateway lost Redis (or died) after the backend finished the load: keep the ready model.
                log.warning("%s holds %s, whose load lost its gateway: its copy is ready", bid, c.model)
            elif (
                c.state is CopyState.LOADING
                and age > max(self.settings.load_timeout, self.settings.stuck_after)
                and await self.store.lease_holder(c.model) is None
            ):
                if await self.store.begin_unload(bid, c.model, now, CopyState.LOADING, c.token) != "ok":
                    continue
                await adapter.unload(c.model)
                if await self.store.remove_copy(bid, c.model, CopyState.UNLOADING) == "ok":
                    log.warning("removed a load of %s on %s abandoned by its gateway", c.model, bid)
        await self.rebuilder.adopt_backend(bid)

    async def drop_dead(self, bid: str) -> int:
        """Remove every copy on a dead backend from the placement (freeing its slots); returns how many."""
        dropped = 0
        for c in await self.store.copies_on(bid):
            if c.state.holds_slot and await self.store.remove_copy(bid, c.model, c.state) == "ok":
                dropped += 1
        if dropped:
            self.dead_dropped += dropped
            log.warning(
                "backend %s failed its health checks: its %d copies left the placement",
                bid,
                dropped,
                extra={"event": "backend_dead", "backend": bid, "copies": dropped},
            )
        return dropped

    async def ensure_min_copies(self) -> None:
        for name in sorted(self.view.replicated):  # not every registered model: only those that ask for copies
            spec = self.view.models.get(name)
            if spec is None or spec.min_copies <= len(self.view.ready_backends(name)):
                continue
            try:
                await self.loader.ensure_copies(name, spec.min_copies)
            except PlacementError as exc:
                log.warning("cannot keep %d copies of %s: %s", spec.min_copies, name, exc)
